from centerexp.cli import main

main()
