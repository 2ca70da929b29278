"""CLI verbs. Each module defines ``register(app, bench_app, shards_app)`` and imports heavy code lazily."""
