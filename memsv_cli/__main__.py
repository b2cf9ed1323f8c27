from memsv_cli.cli import main

main()
