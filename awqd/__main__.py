from awqd.cli import main

main()
