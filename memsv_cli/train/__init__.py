"""memsv_cli.train"""
