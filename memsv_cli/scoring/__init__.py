"""memsv_cli.scoring"""
