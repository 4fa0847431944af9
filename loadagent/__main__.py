from loadagent.cli import main

main()
