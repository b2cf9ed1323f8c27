"""memsv_cli.optim"""
