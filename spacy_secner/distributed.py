"""Annotating documents on a Ray cluster with Ray Data.

The pipeline runs in a pool of Ray actors, each loading it once (`map_batches` with a callable
class and `ActorPoolStrategy`). Every actor runs `annotate_rows` on its batches: the same
failure handling (`annotate_documents`) and the same records (`document_record`: entities,
indicators of compromise) as the in-process `secner annotate`, so a document gets the same
entities and confidences wherever it runs. A document that fails becomes a row with its error;
it never fails the job.

Needs the `ray` extra: `pip install "spacy-secner[ray]"`.
"""

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import spacy
from spacy.language import Language

from .cli.annotate import annotate_documents
from .long_docs import DEFAULT_MAX_PIECE_TOKENS
from .cli.readers import Document, Failure, Item, checked_document, decode, escape_surrogates
from .cli.writers import document_record

try:
    import pyarrow as pa
except ImportError as err:  # pragma: no cover - depends on the installed extras
    raise ImportError("spacy_secner.distributed needs: pip install 'spacy-secner[ray]'") from err

if TYPE_CHECKING:
    import ray.data

    from .cli.annotate import Report

# Ray itself is imported where it is used: `annotate_rows` also runs where Ray is not installed
# (in a Spark `mapInPandas`, say).

ANNOTATED, SKIPPED, FAILED = "annotated", "skipped", "failed"

# The fields of `entity_records` and `ioc_records`; "page" is null for a doc without pages.
ENTITY_TYPE = pa.struct(
    [
        ("label", pa.string()),
        ("text", pa.string()),
        ("start", pa.int64()),
        ("end", pa.int64()),
        ("confidence", pa.float64()),
        ("page", pa.int64()),
    ]
)
IOC_TYPE = pa.struct(
    [
        ("label", pa.string()),
        ("text", pa.string()),
        ("value", pa.string()),
        ("start", pa.int64()),
        ("end", pa.int64()),
        ("page", pa.int64()),
    ]
)
# One row per input row. An explicit schema: a batch without entities would otherwise give
# `list<null>`, which the blocks of other batches cannot be concatenated with.
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("entities", pa.list_(ENTITY_TYPE)),
        ("iocs", pa.list_(IOC_TYPE)),
        ("text", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
    ]
)
# Columns the CLI sends besides id and text: where a document was read, and a PDF's pages and
# a PDF's or HTML page's blocks (see `Document`).
DOCUMENT_COLUMNS = ("source", "page_starts", "block_starts")
INPUT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("page_starts", pa.list_(pa.int64())),
        ("block_starts", pa.list_(pa.int64())),
    ]
)

Actors = Union[int, Tuple[int, int]]
ACTOR_TASK_RETRIES = 3


def to_item(
    doc_id: Any,
    value: Any,
    *,
    max_chars: int = 1_000_000,
    encoding: str = "utf-8",
    encoding_errors: str = "strict",
    **fields: Any,
) -> Item:
    """One row as the CLI's readers would make it: a `Document`, or a `Failure` when the row
    has no id, no text, bytes that do not decode, a text longer than `max_chars` or one with a
    lone surrogate (see `checked_document`); an id's lone surrogates become escapes.

    value (Any): A str, or bytes (e.g. from `ray.data.read_binary_files`) decoded with
        `encoding` and `encoding_errors` as the CLI decodes files.
    fields: `source`, `page_starts`, `block_starts` of the `Document`, where the row has them.
    """
    if doc_id is None:
        return Failure("", "no id")
    doc_id = escape_surrogates(str(doc_id))
    if isinstance(value, (bytes, bytearray)):
        if b"\x00" in value:
            return Failure(doc_id, "binary file (contains NUL bytes)")
        try:
            value = decode(bytes(value), encoding, encoding_errors)
        except ValueError as err:
            return Failure(doc_id, str(err))
    if not isinstance(value, str):
        return Failure(doc_id, 'no "text" string')
    if len(value) > max_chars:
        return Failure(doc_id, f"too large: {len(value)} chars > limit of {max_chars}")
    document = Document(
        doc_id,
        value,
        source=fields.get("source"),
        page_starts=tuple(fields.get("page_starts") or ()),
        block_starts=tuple(fields.get("block_starts") or ()),
    )
    return checked_document(document, encoding_errors)


def annotate_rows(
    nlp: Language,
    ids: Sequence[Any],
    texts: Sequence[Any],
    *,
    batch_size: int = 64,
    max_chars: int = 1_000_000,
    encoding: str = "utf-8",
    encoding_errors: str = "strict",
    keep_text: bool = False,
    max_piece_tokens: int = DEFAULT_MAX_PIECE_TOKENS,
    fields: Optional[Dict[str, Sequence[Any]]] = None,
) -> List[Dict[str, Any]]:
    """Annotate one batch of rows: what each Ray actor runs, and what a Spark `mapInPandas`
    function can run.

    ids, texts: The rows' ids and texts (str or bytes, see `to_item`).
    keep_text (bool): Put each annotated document's text in its row, as `--keep-text` does.
    max_piece_tokens (int): Longer documents are annotated in pieces (`--max-piece-tokens`).
    fields (Optional[Dict[str, Sequence[Any]]]): Columns of `DOCUMENT_COLUMNS`, if any.
    RETURNS (List[Dict[str, Any]]): One row per input row, in order, with the columns of
        `SCHEMA`: those of `document_record` (id, source, entities, iocs: null where the
        pipeline has no `cti_iocs`, text), `status` ("annotated", "skipped" for an empty text,
        "failed") and `error` (None if annotated).
    """
    fields = fields or {}
    rows: List[Dict[str, Any]] = []
    documents: List[Document] = []
    for i, (doc_id, text) in enumerate(zip(ids, texts)):
        extra = {name: values[i] for name, values in fields.items()}
        item = to_item(
            doc_id,
            text,
            max_chars=max_chars,
            encoding=encoding,
            encoding_errors=encoding_errors,
            **extra,
        )
        if isinstance(item, Failure):
            rows.append(failure_row(item))
        elif not item.text.strip():
            rows.append(failure_row(Failure(item.id, "empty", skipped=True)))
        else:
            rows.append({})  # filled in below, in the same order
            documents.append(item)
    results = annotate_documents(
        nlp, documents, batch_size=batch_size, max_piece_tokens=max_piece_tokens
    )
    slots = (i for i, row in enumerate(rows) if not row)
    for (document, result), i in zip(results, slots):
        if isinstance(result, Failure):
            rows[i] = failure_row(result)
        else:
            record = document_record(document.id, result, keep_text=keep_text)
            rows[i] = {
                "id": record["id"],
                "source": record["source"],
                "entities": [{"page": None, **ent} for ent in record["entities"]],
                "iocs": None
                if "iocs" not in record
                else [{"page": None, **ioc} for ioc in record["iocs"]],
                "text": record.get("text"),
                "status": ANNOTATED,
                "error": None,
            }
    return rows


def failure_row(failure: Failure) -> Dict[str, Any]:
    status = SKIPPED if failure.skipped else FAILED
    return {
        "id": failure.id,
        "source": None,
        "entities": [],
        "iocs": None,
        "text": None,
        "status": status,
        "error": failure.reason,
    }


def row_result(row: Dict[str, Any]) -> Union[Tuple[str, Dict[str, Any]], Failure]:
    """A row of `annotate_dataset` back as the CLI reports it: (id, `document_record`) or a
    Failure. The record has the keys, and key order, that the in-process run writes."""
    if row["status"] != ANNOTATED:
        return Failure(row["id"], row["error"], skipped=row["status"] == SKIPPED)

    def without_null_page(spans: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
        return [{k: v for k, v in dict(s).items() if k != "page" or v is not None} for s in spans]

    record: Dict[str, Any] = {
        "id": row["id"],
        "source": row["source"],
        "entities": without_null_page(row["entities"]),
    }
    if row["iocs"] is not None:
        record["iocs"] = without_null_page(row["iocs"])
    if row["text"] is not None:
        record["text"] = row["text"]
    return row["id"], record


class PipelineActor:
    """The callable class of the actor pool: loads the pipeline once, annotates batches."""

    def __init__(
        self,
        model: str,
        *,
        text_column: str,
        id_column: str,
        batch_size: int,
        max_chars: int,
        encoding: str,
        encoding_errors: str,
        keep_text: bool,
        max_piece_tokens: int,
        use_gpu: bool,
    ) -> None:
        if use_gpu:
            # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU, so it is device 0 here.
            spacy.require_gpu(0)
        self.nlp = spacy.load(model)
        # As in process: long documents are annotated in pieces, --max-chars is the only limit.
        self.nlp.max_length = max(self.nlp.max_length, max_chars)
        self.text_column = text_column
        self.id_column = id_column
        self.options = {
            "batch_size": batch_size,
            "max_chars": max_chars,
            "encoding": encoding,
            "encoding_errors": encoding_errors,
            "keep_text": keep_text,
            "max_piece_tokens": max_piece_tokens,
        }

    def __call__(self, batch: "pa.Table") -> "pa.Table":
        for column in (self.id_column, self.text_column):
            if column not in batch.column_names:
                # Not a document's fault: every batch would fail alike, so the job stops.
                columns = ", ".join(batch.column_names)
                raise KeyError(f"no column {column!r} in the dataset (columns: {columns})")
        rows = annotate_rows(
            self.nlp,
            batch.column(self.id_column).to_pylist(),
            batch.column(self.text_column).to_pylist(),
            fields={
                name: batch.column(name).to_pylist()
                for name in DOCUMENT_COLUMNS
                if name in batch.column_names
            },
            **self.options,
        )
        return pa.Table.from_pylist(rows, schema=SCHEMA)


def annotate_dataset(
    ds: "ray.data.Dataset",
    model: str = "en_secner",
    *,
    text_column: str = "text",
    id_column: str = "id",
    actors: Actors = 1,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float = 1.0,
    batch_size: int = 64,
    max_chars: int = 1_000_000,
    encoding: str = "utf-8",
    encoding_errors: str = "strict",
    keep_text: bool = False,
    max_piece_tokens: int = DEFAULT_MAX_PIECE_TOKENS,
) -> "ray.data.Dataset":
    """The entities of every row of `ds`, found by a pool of actors that each load `model` once.

    model (str): A pipeline package installed on the cluster's nodes, or a directory they all
        can read (a relative path is made absolute here).
    text_column (str): Texts: str, or bytes decoded with `encoding` / `encoding_errors`.
    id_column (str): Ids, written as strings.
    actors (Union[int, Tuple[int, int]]): A fixed pool size, or (min, max) to autoscale.
    gpus_per_actor (float): GPUs per actor (a fraction shares a GPU between actors); 0: CPU.
    cpus_per_actor (float): CPUs Ray reserves for each actor.
    batch_size (int): Rows per actor call, and the `nlp.pipe` batch size.
    max_chars (int): Longer texts fail as too large, as in `secner annotate`.
    keep_text (bool): Also the text of each annotated row.
    max_piece_tokens (int): Longer documents are annotated in pieces of whole sentences.
    RETURNS (ray.data.Dataset): Lazy; one row per input row with `id`, `source`, `entities`,
        `iocs`, `text`, `status` and `error` (see `annotate_rows`). Rows keep the input order
        only if the dataset's context says so
        (`ds.context.execution_options.preserve_order = True`).
    """
    import ray.data

    if Path(model).exists():
        model = str(Path(model).resolve())
    if isinstance(actors, int):
        compute = ray.data.ActorPoolStrategy(size=actors)
    else:
        compute = ray.data.ActorPoolStrategy(min_size=actors[0], max_size=actors[1])
    return ds.map_batches(
        PipelineActor,
        fn_constructor_kwargs={
            "model": model,
            "text_column": text_column,
            "id_column": id_column,
            "batch_size": batch_size,
            "max_chars": max_chars,
            "encoding": encoding,
            "encoding_errors": encoding_errors,
            "keep_text": keep_text,
            "max_piece_tokens": max_piece_tokens,
            "use_gpu": gpus_per_actor > 0,
        },
        compute=compute,
        batch_size=batch_size,
        batch_format="pyarrow",
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
        # An actor whose process dies (a native crash, the memory monitor) is restarted and its
        # batch run again; Ray Data would retry forever, so a batch that kills every actor it
        # reaches would never end. After this many, the job fails instead.
        max_task_retries=ACTOR_TASK_RETRIES,
    )


@contextmanager
def cluster(address: Optional[str] = None, *, num_cpus: Optional[int] = None) -> Iterator[None]:
    """Connected to the Ray cluster at `address` ("auto", "ray://host:10001") inside the block,
    or, with None, to the one in RAY_ADDRESS or a new local one with `num_cpus` CPUs (default:
    all). Disconnects at the end (a local cluster stops) unless Ray was already initialized,
    as inside `ray job submit`, where the block uses that connection.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    # The dashboard is a web server: a one-off local run does not need it.
    local = address is None and "RAY_ADDRESS" not in os.environ
    ray.init(
        address=address,
        num_cpus=num_cpus if local else None,
        include_dashboard=False if local else None,
        logging_level=logging.WARNING,
    )
    try:
        yield
    finally:
        ray.shutdown()


def default_actors(gpus_per_actor: float = 0.0) -> int:
    """One actor per CPU of the connected cluster, or per `gpus_per_actor` of its GPUs."""
    import ray

    resources = ray.cluster_resources()
    if gpus_per_actor > 0:
        return max(1, int(resources.get("GPU", 0) / gpus_per_actor))
    return max(1, int(resources.get("CPU", 1)))


def annotate_items_on_ray(
    items: Iterable[Item],
    model: str,
    *,
    report: "Report",
    actors: Actors = 1,
    gpus_per_actor: float = 0.0,
    batch_size: int = 64,
    max_chars: int = 1_000_000,
    keep_text: bool = False,
    max_piece_tokens: int = DEFAULT_MAX_PIECE_TOKENS,
) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """What `secner annotate` does in process (`annotate_items`), on the connected Ray cluster.

    The documents are read here, with the CLI's readers, and put into the cluster's object
    store one block of `batch_size` documents at a time (Ray spills it to disk when it fills);
    the results come back in input order. Failures and skipped documents go to `report` in
    input order, as in process.

    YIELDS (Tuple[str, Dict[str, Any]]): The id and the `document_record` of each annotated
        document.
    """
    import ray
    import ray.data

    from .cli.annotate import InputError

    # The input in order: a Failure from the readers, or None for a document sent to Ray.
    slots: List[Optional[Failure]] = []
    blocks: List[Any] = []
    pending: List[Document] = []

    def put(documents: List[Document]) -> None:
        columns = {
            "id": [d.id for d in documents],
            "text": [d.text for d in documents],
            "source": [d.source for d in documents],
            "page_starts": [list(d.page_starts) for d in documents],
            "block_starts": [list(d.block_starts) for d in documents],
        }
        table = pa.table(columns, schema=INPUT_SCHEMA)
        blocks.append(ray.put(table))

    source = iter(items)
    while True:
        try:
            item = next(source)
        except StopIteration:
            break
        except Exception as err:
            raise InputError(f"reading the inputs failed: {err}") from err
        report.read += 1
        if isinstance(item, Failure):
            slots.append(item)
            continue
        slots.append(None)
        pending.append(item)
        if len(pending) == batch_size:
            put(pending)
            pending = []
    if pending:
        put(pending)
    rows: Iterator[Dict[str, Any]] = iter(())
    if blocks:
        if isinstance(actors, int):
            # A block is one actor call: more actors than blocks would start and load for nothing.
            actors = min(actors, len(blocks))
        ds = annotate_dataset(
            ray.data.from_arrow_refs(blocks),
            model,
            actors=actors,
            gpus_per_actor=gpus_per_actor,
            batch_size=batch_size,
            max_chars=max_chars,
            keep_text=keep_text,
            max_piece_tokens=max_piece_tokens,
        )
        ds.context.execution_options.preserve_order = True
        # The CLI shows its own progress and summary: Ray Data's info lines and the warning that
        # its progress bars are off would only interleave with them.
        ds.context.enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        rows = iter(ds.iter_rows())
    for slot in slots:
        result = row_result(next(rows)) if slot is None else slot
        if isinstance(result, Failure):
            report.problems.append(result)
        else:
            report.annotated += 1
            yield result
