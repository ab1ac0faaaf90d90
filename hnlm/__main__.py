from hnlm.cli import main

raise SystemExit(main())
