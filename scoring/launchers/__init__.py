"""Local process launchers: a Triton server, a Redis server, a Kafka broker (and, in ``scoring.deploy.cluster``, a
Spark standalone cluster), each a :class:`scoring.launchers.process.ManagedProcess`: started, watched and stopped by
pid."""
