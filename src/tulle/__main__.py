from tulle.cli import main

raise SystemExit(main())
