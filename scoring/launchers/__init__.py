"""Local process launchers: a Triton server, a Redis server, a Kafka broker; started, watched and stopped by pid."""
