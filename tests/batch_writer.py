"""A writer process for test_sqlite_batches, run as ``python -m tests.batch_writer PATH``.

It writes ``ROWS`` entries twice, each time with that many concurrent ``aupdate`` calls
(coalesced into batches). Before each batch of the second round it prints the batch's
prompts; a trigger then calls back into the process for every row written, and at the
``STOP_AT``-th row of the second round the process says ``mid-batch`` and stops there,
inside the batch, until the test kills it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from typing import Any

from langchain_core.outputs import Generation
from sqlalchemy import event, text

from langchain_sqlalchemy_cache import SQLiteCache

ROWS = 40
STOP_AT = 20
TABLE = "entries"


def main(path: str) -> None:
    cache = SQLiteCache(path, table_name=TABLE)
    state = {"round": 1, "rows": 0}
    never = threading.Event()

    def row_written(_prompt: object) -> int:
        if state["round"] == 2:
            state["rows"] += 1
            if state["rows"] == STOP_AT:
                print("mid-batch", flush=True)
                never.wait()  # the test kills the process here
        return 0

    engine = cache.async_engine.sync_engine

    @event.listens_for(engine, "connect")
    def _register(dbapi_connection: Any, _record: object) -> None:
        dbapi_connection.create_function("row_written", 1, row_written)

    @event.listens_for(engine, "before_cursor_execute")
    def _announce(*args: Any) -> None:
        statement, context = args[2], args[4]
        if state["round"] == 2 and statement.startswith("INSERT"):
            prompts = [json.loads(p["prompt"]) for p in context.compiled_parameters]
            print("batch " + ",".join(prompts), flush=True)

    async def write(round_: int) -> None:
        value = [Generation(text=f"round {round_}")]
        await asyncio.gather(*(cache.aupdate(f"p{i}", "m", value) for i in range(ROWS)))

    asyncio.run(write(1))
    with cache.sync_engine.connect() as connection:
        for when in ("INSERT", "UPDATE"):
            connection.execute(
                text(
                    f"CREATE TRIGGER watch_{when.lower()} AFTER {when} ON {TABLE} "
                    "BEGIN SELECT row_written(NEW.prompt); END"
                )
            )
    state["round"] = 2
    asyncio.run(write(2))
    print("finished", flush=True)  # never reached: the test kills the process first


if __name__ == "__main__":
    main(sys.argv[1])
