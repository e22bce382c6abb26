"""Development tooling, apart from product code: the `make run` stack, embedded Redis and S3."""
