"""memsv_cli.profile"""
