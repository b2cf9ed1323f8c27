"""memsv_cli.commands"""
