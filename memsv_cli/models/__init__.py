"""memsv_cli.models"""
