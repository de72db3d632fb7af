"""What an api process runs, without HTTP (app/ is the HTTP layer over it): the engine and its lifecycle, search,
writes, hot swap, the doc-log applier and holds, the micro-batcher, memory upkeep, metrics, the job queue."""
