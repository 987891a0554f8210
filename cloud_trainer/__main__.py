from cloud_trainer.cli import main

raise SystemExit(main())
