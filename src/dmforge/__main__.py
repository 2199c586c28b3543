from dmforge.cli import main

main()
