from kimi_runtime.cli import main

raise SystemExit(main())
