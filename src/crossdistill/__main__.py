from crossdistill.cli import main

main()
