import sys

try:
    from lstmkit.cli import main
except KeyboardInterrupt:  # Ctrl-C while the command itself loads: nothing was started
    print("lstmkit: interrupted", file=sys.stderr)
    sys.exit(130)

sys.exit(main())
