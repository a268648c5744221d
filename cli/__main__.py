from hones_nn.cli.main import main

main()
