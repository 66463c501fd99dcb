"""Broden-format datasets: read a Broden directory, convert it to a concepts file, load its images.

Broden (Bau et al., "Network Dissection", CVPR 2017) is the probing dataset of the
compositional-explanations paper. A Broden directory holds:

* ``index.csv``: one row per image, columns ``image,split,ih,iw,sh,sw`` followed by one column
  per category (``color,object,part,material,scene,texture`` in real Broden). ``image`` is a
  path under ``images/``; ``ih×iw`` is the image size and ``sh×sw`` the segmentation size.
  A *pixel-level* category column names segmentation PNGs (paths under ``images/``, several
  separated by ``;``: several label layers, e.g. overlapping parts); an *image-level* category
  column holds label numbers (several separated by ``;``). Which is which is read from the
  column's content.
* ``label.csv``: ``number,name,category,frequency,coverage,syns``; ``category`` lists the
  categories a label occurs in with counts, e.g. ``object(12);part(3)``.
* ``category.csv``: one row per category (``name,first,last,count,frequency`` in real Broden;
  only ``name`` is needed).
* ``c_<category>.csv`` (optional here): ``code,number,name,frequency,coverage``, the
  category-local code of each global label number.
* ``images/``: the images and the segmentation PNGs.
* other index files (optional): a subset of the images, in ``index.csv``'s columns, such as
  real Broden's ``index_ade20k.csv`` (the ADE20k images the paper probes with). Every
  function here takes ``index=`` to read one instead of ``index.csv``; image and PNG paths
  stay relative to the directory's ``images/``.

Label numbers are *global* (the ``number`` column of ``label.csv``) everywhere: a segmentation
PNG stores label ``R + 256·G`` at each pixel, and image-level columns hold the same global
numbers, as Broden's own loader reads them. Label 0 means "no label".

:func:`convert_broden` turns a directory into a ``compexp-concepts`` file (label maps per
pixel-level category, sample labels for image-level ones), decoding the PNGs a chunk of images
at a time into a temporary HDF5 file beside the output, so no dense mask and no full label
tensor is ever in memory.

Sizes are checked before anything is allocated, and a value out of bounds is named:

* label numbers (``label.csv``, ``c_<category>.csv``) must fit the int32 label maps the
  engine uses: at most :data:`MAX_LABEL` (2**31 - 1). Labels found in segmentation PNGs are
  ``R + 256·G``, so below 65536; larger numbers can only be image-level labels.
* a segmentation size ``sh×sw`` and the conversion's mask grid ``H×W`` may have at most
  :data:`MAX_GRID_CELLS` cells (67,108,864, e.g. 8192x8192) per image;
* the memory one decoding step needs (one image's label layers at the grid size, plus the
  largest segmentation PNG decoded) must be available (MemAvailable, the cgroup's memory limit
  and the address-space limit, whichever is smallest).

:class:`BrodenDataset` yields the same images, in the same order, normalised for a model, so
that activations extracted from it line up with the concepts.

Examples:
    >>> parse_label_categories("object(12);part(3)")
    {'object': 12, 'part': 3}
"""
from __future__ import annotations

import csv
import errno
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from .io import _h5

__all__ = [
    "BrodenRow",
    "BrodenLabel",
    "BrodenIndex",
    "BrodenConversion",
    "BrodenDataset",
    "parse_label_categories",
    "read_index_csv",
    "read_broden_index",
    "convert_broden",
    "resolve_index_path",
    "DEFAULT_INDEX",
    "MAX_GRID_CELLS",
    "MAX_LABEL",
]

PathLike = Union[str, "os.PathLike[str]"]

#: The index file of a Broden directory unless ``index=`` names another one.
DEFAULT_INDEX = "index.csv"
# The index.csv columns that describe the image; every other column is a category.
INDEX_COLUMNS = ("image", "split", "ih", "iw", "sh", "sw")
PIXEL, IMAGE = "pixel", "image"

# Label maps decoded per step: about this many bytes of uint16 labels.
_DECODE_BUDGET_BYTES = 64 << 20
# Temporary HDF5 chunks: about this many bytes (whole images).
_TMP_CHUNK_BYTES = 2 << 20
# A segmentation PNG holds 16-bit labels (R + 256·G).
_MAX_PNG_LABEL = 255 + 256 * 255
#: The largest label number: label maps are int32 in the engine.
MAX_LABEL = 2 ** 31 - 1
#: The most cells per image of a segmentation (sh x sw) or of the mask grid (H x W).
MAX_GRID_CELLS = 1 << 26
# Bytes per segmentation pixel while one PNG is decoded: RGB (3), label (2), validity (1), and
# the int32 image and its copy when it is resized (8).
_DECODE_BYTES_PER_PIXEL = 14

_CATEGORY_ENTRY = re.compile(r"^\s*([^()]+?)\s*\(\s*(\d+)\s*\)\s*$")


# =============================================================================== data classes

@dataclass(frozen=True)
class BrodenRow:
    """One row of ``index.csv``.

    Attributes:
        image: the image path relative to ``images/``.
        split: the split name (``"train"``, ``"val"``).
        ih, iw: the image size.
        sh, sw: the segmentation size.
        pixel: pixel-level category -> segmentation PNG paths (relative to ``images/``).
        labels: image-level category -> label numbers (as written, 0 included).
        line: the line of ``index.csv`` the row comes from (for error messages).
    """
    image: str
    split: str
    ih: int
    iw: int
    sh: int
    sw: int
    pixel: Mapping[str, tuple] = field(default_factory=dict)
    labels: Mapping[str, tuple] = field(default_factory=dict)
    line: int = 0


@dataclass(frozen=True)
class BrodenLabel:
    """One row of ``label.csv``.

    Attributes:
        number: the global label number (the value in segmentation PNGs and image-level
            columns).
        name: the label name.
        categories: category -> count, in the order ``label.csv`` lists them.
        frequency: the ``frequency`` column (0 when absent or blank).
        coverage: the ``coverage`` column (0 when absent or blank).
    """
    number: int
    name: str
    categories: Mapping[str, int]
    frequency: float = 0.0
    coverage: float = 0.0


@dataclass(frozen=True)
class BrodenIndex:
    """A Broden directory's metadata (no pixels): see :func:`read_broden_index`.

    Attributes:
        directory: the directory (absolute path).
        rows: the rows of ``index.csv``, in file order.
        column_kinds: each category column of ``index.csv`` (in file order) -> ``"pixel"``
            (names PNGs), ``"image"`` (holds label numbers) or None (empty column).
        labels: label number -> :class:`BrodenLabel`, from ``label.csv``.
        categories: the category names of ``category.csv``, in file order.
        category_codes: category -> {code: global label number}, from the ``c_<category>.csv``
            files that exist.
        index_path: the index file the rows come from (``<directory>/index.csv`` unless
            another index was chosen).
    """
    directory: str
    rows: tuple
    column_kinds: Mapping[str, Optional[str]]
    labels: Mapping[int, BrodenLabel]
    categories: tuple
    category_codes: Mapping[str, Mapping[int, int]]
    index_path: str = ""

    def __post_init__(self) -> None:
        if not self.index_path:
            object.__setattr__(self, "index_path", os.path.join(self.directory, DEFAULT_INDEX))

    def select(self, split: Optional[str] = None) -> tuple:
        """The rows of one split (all rows when ``split`` is None), in file order.

        Raises:
            ValueError: no row has that split (the message lists the splits there are).
        """
        return _select_rows(self.rows, split, self.index_path)

    def members(self, category: str) -> set:
        """Label numbers that belong to ``category``: those whose ``label.csv`` category field
        lists it, plus those of ``c_<category>.csv`` when that file exists."""
        out = {n for n, lab in self.labels.items() if category in lab.categories}
        out.update(self.category_codes.get(category, {}).values())
        return out


@dataclass(frozen=True)
class BrodenConversion:
    """What :func:`convert_broden` wrote.

    Attributes:
        output: the concepts file.
        n_samples: N, the images converted.
        grid: (H, W) of the concept masks.
        categories: chosen category -> number of concepts whose category it is.
        label_layers: pixel-level category -> label layers L written for it.
        n_concepts: K.
    """
    output: str
    n_samples: int
    grid: tuple
    categories: Mapping[str, int]
    label_layers: Mapping[str, int]
    n_concepts: int

    def __str__(self) -> str:
        per_cat = ", ".join(f"{c} {k}" for c, k in self.categories.items())
        layers = ", ".join(f"{c} x{n}" for c, n in self.label_layers.items()) or "none"
        return (f"wrote {self.output}: N = {self.n_samples} images, grid {self.grid[0]}x"
                f"{self.grid[1]}, K = {self.n_concepts} concepts ({per_cat}); label layers: "
                f"{layers}")


# =============================================================================== CSV parsing

def _missing(path: str, what: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, f"No such file or directory ({what})", path)


def _csv_records(path: str, required: Sequence[str], what: str) -> tuple:
    """Header and (line, {column: value}) records of a CSV file.

    Raises FileNotFoundError naming the file, ValueError naming file and line for a missing
    column or a record with the wrong number of fields."""
    if not os.path.isfile(path):
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, f"Is a directory, expected {what}", path)
        raise _missing(path, what)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise ValueError(f"'{path}' is empty: expected a header line with columns "
                                 f"{', '.join(required)}")
            for col in required:
                if col not in header:
                    raise ValueError(f"'{path}', line 1: missing column '{col}' (the header has "
                                     f"{', '.join(header)})")
            records = []
            for fields in reader:
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue                                   # blank line
                if len(fields) != len(header):
                    raise ValueError(f"'{path}', line {reader.line_num}: expected "
                                     f"{len(header)} fields ({','.join(header)}), found "
                                     f"{len(fields)}")
                records.append((reader.line_num, dict(zip(header, fields))))
    except UnicodeDecodeError as e:
        raise ValueError(f"'{path}' is not a UTF-8 text file ({e})") from None
    except csv.Error as e:
        raise ValueError(f"'{path}' is not a readable CSV file ({e})") from None
    return header, records


def _int_field(value: str, path: str, line: int, column: str, *, minimum: int = 0,
               maximum: int = 2 ** 63 - 1, why: str = "") -> int:
    text = value.strip()
    if not re.fullmatch(r"[+]?\d+", text):
        raise ValueError(f"'{path}', line {line}, column '{column}': expected an integer, "
                         f"found {value!r}")
    digits = text.lstrip("+").lstrip("0") or "0"
    out = int(digits) if len(digits) <= 30 else None       # no 10**6-digit int() on garbage
    if out is None or out > maximum:
        shown = digits if len(digits) <= 30 else f"{digits[:12]}... ({len(digits)} digits)"
        raise ValueError(f"'{path}', line {line}, column '{column}': {shown} is too large "
                         f"(at most {maximum}{why})")
    if out < minimum:
        raise ValueError(f"'{path}', line {line}, column '{column}': expected an integer >= "
                         f"{minimum}, found {out}")
    return out


_LABEL_WHY = (": label numbers must fit the int32 label maps the engine uses; labels in "
              "segmentation PNGs are R + 256·G, so below 65536")


def _label_field(value: str, path: str, line: int, column: str) -> int:
    return _int_field(value, path, line, column, maximum=MAX_LABEL, why=_LABEL_WHY)


def _float_field(value: str, path: str, line: int, column: str) -> float:
    text = value.strip()
    if not text:
        return 0.0
    try:
        out = float(text)
    except ValueError:
        raise ValueError(f"'{path}', line {line}, column '{column}': expected a number, found "
                         f"{value!r}") from None
    if not np.isfinite(out):
        raise ValueError(f"'{path}', line {line}, column '{column}': expected a finite number, "
                         f"found {value!r}")
    return out


def parse_label_categories(text: str, *, where: str = "category field") -> dict:
    """Parse a ``label.csv`` category field such as ``object(12);part(3)``.

    Args:
        text: the field; an empty field (or ``-``) means no category.
        where: words naming the field in error messages.

    Returns:
        Category -> count, in the order of the field (a repeated category keeps the sum).

    Raises:
        ValueError: an entry is not ``name(count)``.

    Examples:
        >>> parse_label_categories("object(12);part(3)")
        {'object': 12, 'part': 3}
        >>> parse_label_categories("")
        {}
    """
    out: dict = {}
    if text.strip() in ("", "-"):
        return out
    for entry in text.split(";"):
        if not entry.strip():
            continue
        m = _CATEGORY_ENTRY.match(entry)
        if m is None:
            raise ValueError(f"{where}: expected entries like 'object(12)' separated by ';', "
                             f"found {entry!r} in {text!r}")
        out[m.group(1)] = out.get(m.group(1), 0) + int(m.group(2))
    return out


def read_index_csv(path: PathLike) -> tuple:
    """Read a Broden ``index.csv``.

    Args:
        path: the file.

    Returns:
        ``(rows, column_kinds)``: the :class:`BrodenRow` list in file order, and each category
        column (every column but ``image,split,ih,iw,sh,sw``, in file order) -> ``"pixel"``
        when its entries name PNG files, ``"image"`` when they are label numbers, None when
        the column is empty.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a required column is missing, a size is not a positive integer, a record
            has the wrong number of fields, or a category column mixes file names and label
            numbers; the message names the file, the line and the column.

    Examples:
        >>> import os, tempfile
        >>> p = os.path.join(tempfile.mkdtemp(), "index.csv")
        >>> with open(p, "w") as fh:
        ...     _ = fh.write("image,split,ih,iw,sh,sw,object,part,scene\\n"
        ...                  "a.jpg,train,8,8,4,4,a_obj.png,a_p1.png;a_p2.png,7\\n")
        >>> rows, kinds = read_index_csv(p)
        >>> kinds
        {'object': 'pixel', 'part': 'pixel', 'scene': 'image'}
        >>> rows[0].pixel["part"], rows[0].labels["scene"]
        (('a_p1.png', 'a_p2.png'), (7,))
    """
    p = os.fspath(path)
    header, records = _csv_records(p, INDEX_COLUMNS, "a Broden index.csv")
    categories = [c for c in header if c not in INDEX_COLUMNS]
    kinds: dict = {c: None for c in categories}
    first_line: dict = {}
    rows = []
    for line, rec in records:
        sizes = {c: _int_field(rec[c], p, line, c, minimum=1) for c in ("ih", "iw", "sh", "sw")}
        image = rec["image"].strip()
        if not image:
            raise ValueError(f"'{p}', line {line}, column 'image': the image path is empty")
        pixel, labels = {}, {}
        for c in categories:
            entries = [e.strip() for e in rec[c].split(";") if e.strip()]
            if not entries:
                continue
            numeric = [bool(re.fullmatch(r"\d+", e)) for e in entries]
            kind = IMAGE if all(numeric) else PIXEL
            if any(numeric) and not all(numeric):
                raise ValueError(f"'{p}', line {line}, column '{c}': mixes label numbers and "
                                 f"file names in {rec[c]!r}")
            if kinds[c] not in (None, kind):
                made = "label numbers" if kinds[c] == IMAGE else "PNG file names"
                raise ValueError(f"'{p}', line {line}, column '{c}': found {rec[c]!r}, but the "
                                 f"column held {made} from line {first_line[c]} on; a column "
                                 f"holds either PNG file names or label numbers")
            if kinds[c] is None:
                kinds[c], first_line[c] = kind, line
            if kind == IMAGE:
                labels[c] = tuple(_label_field(e, p, line, c) for e in entries)
            else:
                pixel[c] = tuple(entries)
        rows.append(BrodenRow(image=image, split=rec["split"].strip(), pixel=pixel,
                              labels=labels, line=line, **sizes))
    return rows, kinds


def _read_labels(path: str) -> dict:
    header, records = _csv_records(path, ("number", "name", "category"), "a Broden label.csv")
    labels: dict = {}
    for line, rec in records:
        number = _label_field(rec["number"], path, line, "number")
        if number in labels:
            raise ValueError(f"'{path}', line {line}, column 'number': label {number} is listed "
                             f"twice")
        try:
            cats = parse_label_categories(rec["category"])
        except ValueError as e:
            raise ValueError(f"'{path}', line {line}, column 'category': {e}") from None
        freq = _float_field(rec.get("frequency", ""), path, line, "frequency")
        cov = _float_field(rec.get("coverage", ""), path, line, "coverage")
        labels[number] = BrodenLabel(number=number, name=rec["name"].strip(), categories=cats,
                                     frequency=freq, coverage=cov)
    return labels


def _read_category_names(path: str) -> tuple:
    _, records = _csv_records(path, ("name",), "a Broden category.csv")
    names = []
    for line, rec in records:
        name = rec["name"].strip()
        if not name:
            raise ValueError(f"'{path}', line {line}, column 'name': the category name is empty")
        names.append(name)
    return tuple(names)


def _read_category_codes(path: str) -> dict:
    _, records = _csv_records(path, ("code", "number"), "a Broden c_<category>.csv")
    return {_label_field(rec["code"], path, line, "code"):
            _label_field(rec["number"], path, line, "number") for line, rec in records}


def _check_directory(directory: PathLike) -> str:
    d = os.path.abspath(os.fspath(directory))
    if not os.path.exists(d):
        raise _missing(d, "the Broden directory")
    if not os.path.isdir(d):
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory (expected a Broden directory)",
                                 d)
    return d


def resolve_index_path(directory: PathLike, index: Optional[PathLike] = None) -> str:
    """The index file of a Broden directory: ``index.csv``, or the one ``index`` names.

    Args:
        directory: the Broden directory.
        index: None for ``<directory>/index.csv``; otherwise an absolute path, or a relative
            one, looked up in ``directory`` first and, when not there, in the current
            directory (so a path typed relative to where the command runs works too).

    Returns:
        The absolute path of the index file (checked to exist).

    Raises:
        FileNotFoundError: the directory or the index file does not exist (the message names
            the path looked up in ``directory``).
        TypeError: ``index`` is not a path.

    Examples:
        >>> import os, tempfile
        >>> d = tempfile.mkdtemp()
        >>> open(os.path.join(d, "index_ade20k.csv"), "w").close()
        >>> resolve_index_path(d, "index_ade20k.csv") == os.path.join(d, "index_ade20k.csv")
        True
    """
    d = _check_directory(directory)
    if index is None:
        path = os.path.join(d, DEFAULT_INDEX)
    else:
        if not isinstance(index, (str, os.PathLike)) or not os.fspath(index):
            raise TypeError(f"index must be the path of an index file such as "
                            f"'index_ade20k.csv', got {index!r}")
        given = os.fspath(index)
        path = os.path.join(d, given)                       # an absolute path stays as it is
        if not os.path.exists(path) and os.path.exists(given):
            path = os.path.abspath(given)
    if not os.path.isfile(path):
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, "Is a directory, expected a Broden index file",
                                    path)
        what = "a Broden index.csv" if index is None else "the Broden index file given as index"
        raise _missing(path, what)
    return path


def read_broden_index(directory: PathLike, index: Optional[PathLike] = None) -> BrodenIndex:
    """Read the metadata of a Broden directory: ``index.csv`` (or another index file),
    ``label.csv``, ``category.csv`` and the ``c_<category>.csv`` files that exist. No image or
    PNG is opened.

    Args:
        directory: the Broden directory.
        index: an index file to read instead of ``index.csv``, such as ``"index_ade20k.csv"``
            (see :func:`resolve_index_path`); it has ``index.csv``'s columns.

    Returns:
        A :class:`BrodenIndex`.

    Raises:
        FileNotFoundError: the directory, the index file, ``label.csv`` or ``category.csv``
            does not exist (the exception names the path).
        ValueError: a malformed CSV file (a missing column, a non-integer where an integer is
            expected, a malformed category field, a label listed twice); the message names the
            file, the line and the column.
    """
    d = _check_directory(directory)
    index_path = resolve_index_path(d, index)
    rows, kinds = read_index_csv(index_path)
    labels = _read_labels(os.path.join(d, "label.csv"))
    categories = _read_category_names(os.path.join(d, "category.csv"))
    codes = {}
    for cat in categories:
        p = os.path.join(d, f"c_{cat}.csv")
        if os.path.isfile(p):
            codes[cat] = _read_category_codes(p)
    return BrodenIndex(directory=d, rows=tuple(rows), column_kinds=kinds, labels=labels,
                       categories=categories, category_codes=codes, index_path=index_path)


def _select_rows(rows: Sequence[BrodenRow], split: Optional[str], index_path: str) -> tuple:
    if split is None:
        out = tuple(rows)
    else:
        if not isinstance(split, str):
            raise TypeError(f"split must be a string such as 'train' or 'val', got {split!r}")
        out = tuple(r for r in rows if r.split == split)
    if not out:
        splits = sorted({r.split for r in rows})
        if split is None:
            raise ValueError(f"'{index_path}' has no rows (no images)")
        raise ValueError(f"split {split!r}: no row of '{index_path}' has it (splits there: "
                         f"{', '.join(repr(s) for s in splits) or 'none'})")
    return out


# =============================================================================== conversion

def _check_grid(grid: Any) -> Optional[tuple]:
    if grid is None:
        return None
    if isinstance(grid, (int, np.integer)) and not isinstance(grid, (bool, np.bool_)):
        grid = (grid, grid)
    try:
        out = tuple(grid)
    except TypeError:
        raise TypeError(f"grid must be (H, W) or an integer, got {grid!r}") from None
    if len(out) != 2 or not all(isinstance(g, (int, np.integer)) and not isinstance(g, bool)
                                for g in out):
        raise TypeError(f"grid must be (H, W) with two integers, got {grid!r}")
    if out[0] < 1 or out[1] < 1:
        raise ValueError(f"grid must be (H, W) with H, W >= 1, got {grid!r}")
    h, w = int(out[0]), int(out[1])
    if h * w > MAX_GRID_CELLS:
        raise ValueError(f"grid {h}x{w} has {h * w:,} cells per image, more than the "
                         f"{MAX_GRID_CELLS:,} allowed (compexp_core.broden.MAX_GRID_CELLS, e.g. "
                         f"8192x8192); choose a smaller grid")
    return h, w


def _available_memory() -> Optional[int]:
    """Bytes this process can still allocate, as far as can be told (None when unknown): the
    smallest of MemAvailable, the cgroup's memory limit less its usage, and the address-space
    limit (RLIMIT_AS) less the current address space."""
    found = []
    try:
        with open("/proc/meminfo") as fh:
            for text in fh:
                if text.startswith("MemAvailable:"):
                    found.append(int(text.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            pass
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as fh:
                found.append(int(limit) - int(fh.read().strip()))
    except (OSError, ValueError):
        pass
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            with open("/proc/self/statm") as fh:
                used = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
            found.append(soft - used)
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return max(0, min(found)) if found else None


def _check_sizes(rows: Sequence[BrodenRow], grid: tuple, layers: Mapping[str, int],
                 index_path: str) -> None:
    """Refuse, before anything is allocated, segmentations larger than MAX_GRID_CELLS and a
    decoding step (one image) that needs more memory than is available."""
    big = max(rows, key=lambda r: r.sh * r.sw)
    if big.sh * big.sw > MAX_GRID_CELLS:
        raise ValueError(f"'{index_path}', line {big.line}: image '{big.image}' has "
                         f"segmentation size sh x sw = {big.sh}x{big.sw} = "
                         f"{big.sh * big.sw:,} cells, more than the {MAX_GRID_CELLS:,} allowed "
                         f"per image (compexp_core.broden.MAX_GRID_CELLS)")
    if not layers:
        return
    h, w = grid
    most = max(layers.values())
    # Two category blocks of one image (the previous one is freed after the next is made),
    # one PNG decoded at its own size, and its label map at the grid size.
    need = (2 * most * h * w * 2 + big.sh * big.sw * _DECODE_BYTES_PER_PIXEL + h * w * 6)
    available = _available_memory()
    if available is not None and need > available:
        raise ValueError(f"decoding one image needs about {need / 2 ** 30:.3g} GiB ({most} label "
                         f"layer(s) on the {h}x{w} grid, the largest segmentation "
                         f"{big.sh}x{big.sw} from '{index_path}' line {big.line}), but only "
                         f"{available / 2 ** 30:.3g} GiB of memory is available; choose a "
                         f"smaller grid")


def _choose_categories(index: BrodenIndex, rows: Sequence[BrodenRow],
                       categories: Optional[Sequence[str]]) -> list:
    index_path = index.index_path
    if categories is None:
        # Every category column with data in the chosen rows, in index.csv order.
        used = {c for r in rows for c in list(r.pixel) + list(r.labels)}
        chosen = [c for c in index.column_kinds if c in used]
        if not chosen:
            raise ValueError(f"'{index_path}': no category column has any data in the chosen "
                             f"rows")
        return chosen
    if isinstance(categories, str):
        categories = [c for c in categories.split(",") if c.strip()]
    chosen = []
    for c in categories:
        if not isinstance(c, str):
            raise TypeError(f"categories must be category names (strings), got {c!r}")
        c = c.strip()
        if c not in index.column_kinds:
            raise ValueError(f"categories: {c!r} is not a category column of '{index_path}' "
                             f"(its categories: {', '.join(index.column_kinds) or 'none'})")
        if c not in index.categories:
            raise ValueError(f"categories: {c!r} is not listed in "
                             f"'{os.path.join(index.directory, 'category.csv')}' (it lists "
                             f"{', '.join(index.categories) or 'none'})")
        if c not in chosen:
            chosen.append(c)
    if not chosen:
        raise ValueError("categories is empty")
    return chosen


def _concepts(index: BrodenIndex, chosen: Sequence[str], min_frequency: float) -> tuple:
    """Concept label numbers (ascending), names (unique) and primary categories."""
    members = {c: index.members(c) for c in chosen}
    numbers, cats = [], []
    for number in sorted(index.labels):
        lab = index.labels[number]
        if number == 0 or lab.frequency < min_frequency:
            continue
        mine = [c for c in chosen if number in members[c]]
        if not mine:
            continue
        # The primary category: the largest count in label.csv; ties keep label.csv's order,
        # then the chosen order.
        order = list(lab.categories)
        mine.sort(key=lambda c: (-lab.categories.get(c, 0),
                                 order.index(c) if c in order else len(order)))
        numbers.append(number)
        cats.append(mine[0])
    names = [index.labels[n].name for n in numbers]
    # Label names are usually unique in Broden (suffixes such as "-s", "-c"); make sure.
    counts: dict = {}
    for nm in names:
        counts[nm] = counts.get(nm, 0) + 1
    names = [f"{nm}-{cat}" if counts[nm] > 1 else nm for nm, cat in zip(names, cats)]
    seen: dict = {}
    for nm in names:
        seen[nm] = seen.get(nm, 0) + 1
    taken = set(names)
    out = []
    for nm, number in zip(names, numbers):
        if seen[nm] > 1:
            nm2 = f"{nm}-{number}"
            while nm2 in taken:
                nm2 += "_"
            taken.add(nm2)
            nm = nm2
        out.append(nm)
    return numbers, out, cats


def _png_path(directory: str, rel: str) -> str:
    return os.path.join(directory, "images", rel)


def _decode_png(path: str, row: BrodenRow, grid: tuple, valid: np.ndarray,
                index_name: str = DEFAULT_INDEX) -> np.ndarray:
    """The label map of one segmentation PNG (R + 256·G), checked, at the grid size."""
    from PIL import Image

    if not os.path.isfile(path):
        raise _missing(path, f"a segmentation PNG named by {index_name} line {row.line}")
    rgb = None
    try:
        with Image.open(path) as im:
            im.load()
            size, mode = im.size, im.mode
            if mode in ("RGB", "RGBA", "P", "PA"):
                rgb = np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"segmentation PNG '{path}' is not a readable image ({e})") from None
    if rgb is None:
        raise ValueError(f"segmentation PNG '{path}' has mode {mode}: expected an RGB image "
                         f"(label = R + 256·G)")
    if size != (row.sw, row.sh):
        raise ValueError(f"segmentation PNG '{path}' is {size[1]}x{size[0]} (height x width), "
                         f"but {index_name} line {row.line} gives sh x sw = "
                         f"{row.sh}x{row.sw}")
    labels = rgb[:, :, 0].astype(np.uint16) | (rgb[:, :, 1].astype(np.uint16) << 8)
    ok = valid[labels]
    if not ok.all():
        y, x = np.argwhere(~ok)[0]
        raise ValueError(f"segmentation PNG '{path}' holds label {int(labels[y, x])} (at pixel "
                         f"y={y}, x={x}), which label.csv does not list")
    if (row.sh, row.sw) != grid:
        # Nearest neighbour keeps label values intact.
        img = Image.fromarray(labels.astype(np.int32))
        labels = np.asarray(img.resize((grid[1], grid[0]), Image.NEAREST)).astype(np.uint16)
    return labels


def _check_chunk_samples(chunk_samples: Any) -> Optional[int]:
    return None if chunk_samples is None else _h5.check_chunk_samples(chunk_samples)


def convert_broden(directory: PathLike, output: PathLike, *,
                   categories: Optional[Sequence[str]] = None, split: Optional[str] = None,
                   grid: Optional[Union[int, Sequence[int]]] = None, min_frequency: float = 0,
                   chunk_samples: Optional[int] = None,
                   compression: Optional[Union[str, int]] = None, with_index: bool = False,
                   progress: bool = True, index: Optional[PathLike] = None) -> BrodenConversion:
    """Convert a Broden-format directory into a ``compexp-concepts`` file.

    Concepts are the labels of ``label.csv`` (by number, ascending) that belong to a chosen
    category (per ``label.csv``'s category field or ``c_<category>.csv``), label 0 excepted.
    A label in several chosen categories (say ``object`` and ``part``) is one concept whose
    category is its primary one: the chosen category with the largest count in ``label.csv``.
    Concept names are the label names; a name shared by several concepts gets ``-<category>``
    appended (and ``-<number>`` if still not unique).

    Each pixel-level category becomes ``label_maps/<category>`` with L layers (L = the most
    PNGs any chosen row lists for it), each PNG decoded as label ``R + 256·G``; image-level
    categories become ``sample_labels``. All concepts share one label -> concept mapping, so a
    label found in any chosen column counts for its concept. PNGs are decoded
    ``chunk_samples`` images at a time into a temporary HDF5 file beside ``output`` (removed
    afterwards, also on error), which :func:`compexp_core.io.write_concept_sources` then
    copies chunk by chunk: nothing of size N·H·W is held in memory.

    Args:
        directory: the Broden directory.
        output: the concepts file to write (replaced only when the conversion succeeds).
        categories: categories to use (names, or one comma-separated string); default: every
            category column with data in the chosen rows.
        split: keep only the rows of this split (``"train"``, ``"val"``); default all rows.
        grid: (H, W) of the concept masks; label maps of another size are resized with
            nearest neighbour. Default: the rows' common segmentation size ``sh×sw``.
        min_frequency: drop labels whose ``label.csv`` frequency is below this.
        chunk_samples: images decoded per step (default: about 64 MiB of label maps).
        compression: HDF5 compression of the label maps in the output (``"gzip"``, ``"lzf"``).
        with_index: also store the built concept index (faster loading later).
        progress: show a progress bar over the images.
        index: an index file to read instead of ``index.csv``, such as Broden's
            ``"index_ade20k.csv"`` (relative to ``directory``, or absolute; see
            :func:`resolve_index_path`): its rows, in its order, are the samples.

    Returns:
        A :class:`BrodenConversion` summary.

    Raises:
        FileNotFoundError: the directory, the index file (``index.csv`` or ``index``),
            ``label.csv``, ``category.csv`` or a segmentation PNG does not exist.
        ValueError: a malformed CSV file (file, line and column named); an unknown category
            or split; rows of different segmentation sizes without ``grid`` (the first
            offending image named); a PNG that cannot be read, whose size differs from its
            row's ``sh×sw``, or that holds a label ``label.csv`` does not list (file and label
            named); an image-level label number ``label.csv`` does not list; no concept;
            sizes out of bounds, checked before anything is allocated (see the module
            docstring): a label number above :data:`MAX_LABEL`, a segmentation ``sh×sw`` or
            ``grid`` of more than :data:`MAX_GRID_CELLS` cells, a decoding step needing more
            memory than is available.
        TypeError: arguments of the wrong type.

    Examples:
        A directory written by hand (one 2x2 image whose object PNG holds labels 1 and 2):

        >>> import os, tempfile
        >>> import numpy as np
        >>> from PIL import Image
        >>> d = tempfile.mkdtemp(); os.makedirs(os.path.join(d, "images"))
        >>> files = {"index.csv": "image,split,ih,iw,sh,sw,object,scene\\n"
        ...                       "a.jpg,val,4,4,2,2,a_object.png,3\\n",
        ...          "label.csv": "number,name,category,frequency,coverage,syns\\n"
        ...                       "1,sky,object(1),1,0.5,\\n2,tree,object(1),1,0.5,\\n"
        ...                       "3,forest-s,scene(1),1,1.0,\\n",
        ...          "category.csv": "name,first,last,count,frequency\\n"
        ...                          "object,1,2,2,1\\nscene,3,3,1,1\\n"}
        >>> for name, text in files.items():
        ...     with open(os.path.join(d, name), "w") as fh:
        ...         _ = fh.write(text)
        >>> seg = np.zeros((2, 2, 3), np.uint8); seg[0, :, 0] = 1; seg[1, :, 0] = 2
        >>> Image.fromarray(seg).save(os.path.join(d, "images", "a_object.png"))
        >>> out = os.path.join(d, "concepts.h5")
        >>> summary = convert_broden(d, out, progress=False)
        >>> summary.n_samples, summary.grid, dict(summary.categories)
        (1, (2, 2), {'object': 2, 'scene': 1})
        >>> from compexp_core.io import load_concepts
        >>> cs = load_concepts(out)
        >>> cs.names, cs.sizes.tolist()
        (('sky', 'tree', 'forest-s'), [2, 2, 4])
    """
    from .io import write_concept_sources

    out_path = os.fspath(output)
    out_dir = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(out_dir):
        raise _missing(out_dir, "the folder of the output file")
    grid = _check_grid(grid)
    chunk_samples = _check_chunk_samples(chunk_samples)
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, (int, float, np.number)):
        raise TypeError(f"min_frequency must be a number, got {min_frequency!r}")
    broden = read_broden_index(directory, index)
    d = broden.directory
    index_path = broden.index_path
    index_name = os.path.basename(index_path)
    rows = broden.select(split)
    chosen = _choose_categories(broden, rows, categories)
    numbers, names, cats = _concepts(broden, chosen, float(min_frequency))
    if not numbers:
        raise ValueError(f"no concepts: no label of '{os.path.join(d, 'label.csv')}' (with "
                         f"frequency >= {min_frequency}) belongs to the categories "
                         f"{', '.join(chosen)}")

    # ---- the mask grid: one segmentation size for all rows, unless grid resizes them
    if grid is None:
        grid = (rows[0].sh, rows[0].sw)
        for r in rows:
            if (r.sh, r.sw) != grid:
                raise ValueError(
                    f"'{index_path}', line {r.line}: image '{r.image}' has segmentation size "
                    f"{r.sh}x{r.sw}, but '{rows[0].image}' (line {rows[0].line}) has "
                    f"{grid[0]}x{grid[1]}; pass grid=(H, W) to resize all label maps to one "
                    f"size")
    n = len(rows)
    h, w = grid

    pixel_cats = [c for c in chosen if broden.column_kinds.get(c) == PIXEL]
    image_cats = [c for c in chosen if broden.column_kinds.get(c) == IMAGE]
    layers = {c: max(len(r.pixel.get(c, ())) for r in rows) for c in pixel_cats}
    layers = {c: nl for c, nl in layers.items() if nl > 0}
    _check_sizes(rows, grid, layers, index_path)

    # ---- one label -> concept mapping for every category. Label maps hold PNG labels
    # (< 65536), so the array covers those; image-level labels are looked up in a dict.
    concept_of = {number: j for j, number in enumerate(numbers)}
    known = np.array([v for v in broden.labels if v <= _MAX_PNG_LABEL], np.int64)
    concept_of_label = np.full(int(known.max()) + 1 if known.size else 1, -1, np.int32)
    png_numbers = [v for v in numbers if v <= _MAX_PNG_LABEL]
    concept_of_label[png_numbers] = [concept_of[v] for v in png_numbers]
    valid = np.zeros(_MAX_PNG_LABEL + 1, bool)           # label values a PNG may hold
    valid[0] = True
    valid[known] = True

    # ---- image-level labels: small ([N, k] booleans), built in memory
    sample_labels = None
    if image_cats:
        hits_rows, hits_cols = [], []
        for i, r in enumerate(rows):
            for c in image_cats:
                for v in r.labels.get(c, ()):
                    if v == 0:
                        continue                               # 0 = no label
                    if v not in broden.labels:
                        raise ValueError(f"'{index_path}', line {r.line}, column '{c}': label "
                                         f"{v} is not listed in "
                                         f"'{os.path.join(d, 'label.csv')}'")
                    j = concept_of.get(v, -1)
                    if j >= 0:
                        hits_rows.append(i)
                        hits_cols.append(j)
        if hits_rows:
            cols = np.unique(np.asarray(hits_cols, np.int32))
            present = np.zeros((n, cols.size), bool)
            present[np.asarray(hits_rows), np.searchsorted(cols, hits_cols)] = True
            sample_labels = (present, cols)

    row_bytes = max(1, sum(layers.values()) * h * w * 2)
    step = chunk_samples or max(1, min(n, _DECODE_BUDGET_BYTES // row_bytes))
    bar = None
    if progress and layers:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, unit="image", desc="convert-broden")
    try:
        with _h5.scratch_file(out_path) as tmp:
            maps = {}
            for c, nl in layers.items():
                # about _TMP_CHUNK_BYTES a chunk: whole images, or single layers of large ones
                per_layer = h * w * 2
                chunk_layers = max(1, min(nl, _TMP_CHUNK_BYTES // per_layer))
                chunk = max(1, min(n, _TMP_CHUNK_BYTES // (chunk_layers * per_layer)))
                maps[c] = tmp.create_dataset(c, shape=(n, nl, h, w), dtype=np.uint16,
                                             chunks=(chunk, chunk_layers, h, w))
            for s in range(0, n if layers else 0, step):
                part = rows[s:s + step]
                for c, nl in layers.items():
                    block = np.zeros((len(part), nl, h, w), np.uint16)
                    for i, r in enumerate(part):
                        for layer, rel in enumerate(r.pixel.get(c, ())):
                            block[i, layer] = _decode_png(_png_path(d, rel), r, grid, valid,
                                                          index_name)
                    maps[c][s:s + len(part)] = block
                if bar is not None:
                    bar.update(len(part))
            tmp.flush()
            write_concept_sources(
                out_path, n_samples=n, grid=grid, names=names, categories=cats,
                label_maps={c: (maps[c], concept_of_label) for c in layers},
                sample_labels=sample_labels, compression=compression, with_index=with_index)
    finally:
        if bar is not None:
            bar.close()
    per_cat = {c: cats.count(c) for c in chosen}
    return BrodenConversion(output=out_path, n_samples=n, grid=grid, categories=per_cat,
                            label_layers=dict(layers), n_concepts=len(numbers))


# =============================================================================== images

def _check_size(size: Any) -> Optional[tuple]:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, (bool, np.bool_)):
        size = (size, size)
    try:
        out = tuple(size)
    except TypeError:
        raise TypeError(f"size must be an integer or (height, width), got {size!r}") from None
    if len(out) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool)
                                for s in out):
        raise TypeError(f"size must be an integer or (height, width), got {size!r}")
    if out[0] < 1 or out[1] < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    if int(out[0]) * int(out[1]) > MAX_GRID_CELLS:
        raise ValueError(f"size {out[0]}x{out[1]} has {int(out[0]) * int(out[1]):,} pixels per "
                         f"image, more than the {MAX_GRID_CELLS:,} allowed "
                         f"(compexp_core.broden.MAX_GRID_CELLS)")
    return int(out[0]), int(out[1])


def _check_triple(values: Any, what: str, positive: bool) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be 3 numbers (one per RGB channel), got {values!r}") from None
    if arr.shape != (3,) or not np.isfinite(arr).all():
        raise ValueError(f"{what} must be 3 finite numbers (one per RGB channel), got {values!r}")
    if positive and (arr <= 0).any():
        raise ValueError(f"{what} must be positive, got {values!r}")
    return arr


class BrodenDataset:
    """The images of a Broden directory, normalised for a model (a PyTorch-style dataset).

    Rows are those of ``index.csv`` (or of the ``index`` file) in file order, filtered by
    ``split`` exactly as :func:`convert_broden` filters them, so sample i here is sample i of
    the concepts file converted with the same ``index`` and ``split``. It needs only the index
    file and ``images/``.

    The class does not subclass ``torch.utils.data.Dataset`` (so importing this module does
    not import torch); a ``DataLoader`` only needs ``__len__`` and ``__getitem__``.

    Args:
        directory: the Broden directory.
        split: keep only the rows of this split; default all rows.
        index: an index file to read instead of ``index.csv``, such as Broden's
            ``"index_ade20k.csv"`` (see :func:`resolve_index_path`).
        size: resize images to this (height, width) (or size x size) with bilinear
            interpolation; default: keep the index's ``ih×iw``.
        mean, std: per-channel normalisation of the [0, 1] RGB values (ImageNet's by default).

    Attributes:
        directory: the directory (absolute path).
        rows: the :class:`BrodenRow` of each sample.
        names: the image paths (relative to ``images/``), one per sample.
        index_path: the index file the rows come from.
        description: ``"broden:<directory>"`` (``"broden:<index file>"`` when the index is
            not the directory's ``index.csv``), plus ``":<split>"``, for provenance.

    Raises:
        FileNotFoundError: the directory or its index file does not exist.
        ValueError: a malformed index file; no row of ``split``; a bad ``size``/``mean``/
            ``std``.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> from PIL import Image
        >>> d = tempfile.mkdtemp(); os.makedirs(os.path.join(d, "images"))
        >>> with open(os.path.join(d, "index.csv"), "w") as fh:
        ...     _ = fh.write("image,split,ih,iw,sh,sw,object\\na.jpg,val,6,8,3,4,\\n")
        >>> Image.new("RGB", (8, 6), (255, 0, 0)).save(os.path.join(d, "images", "a.jpg"))
        >>> ds = BrodenDataset(d, size=4)
        >>> len(ds), tuple(ds[0].shape), ds.raw_image(0).shape
        (1, (3, 4, 4), (4, 4, 3))
    """

    def __init__(self, directory: PathLike, *, split: Optional[str] = None,
                 index: Optional[PathLike] = None,
                 size: Optional[Union[int, Sequence[int]]] = None,
                 mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225)) -> None:
        self.directory = _check_directory(directory)
        self.size = _check_size(size)
        self.mean = _check_triple(mean, "mean", positive=False)
        self.std = _check_triple(std, "std", positive=True)
        self.index_path = resolve_index_path(self.directory, index)
        rows, _ = read_index_csv(self.index_path)
        self.split = split
        self.rows = _select_rows(rows, split, self.index_path)
        self.names = tuple(r.image for r in self.rows)
        # The directory alone means its index.csv; another index is named by its path.
        default = self.index_path == os.path.join(self.directory, DEFAULT_INDEX)
        where = self.directory if default else self.index_path
        self.description = f"broden:{where}" + (f":{split}" if split else "")

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"BrodenDataset({self.description!r}, {len(self)} images, size={self.size})"

    def image_path(self, i: int) -> str:
        """The file of sample ``i``."""
        return os.path.join(self.directory, "images", self.rows[self._index(i)].image)

    def _index(self, i: Any) -> int:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"BrodenDataset index must be an integer, got {i!r}")
        n = len(self.rows)
        if not -n <= i < n:
            raise IndexError(f"BrodenDataset index {i} out of range for {n} images")
        return int(i) % n

    def raw_image(self, i: int) -> np.ndarray:
        """Sample ``i`` as uint8 RGB ``[H, W, 3]``, resized to ``size`` like ``self[i]`` but not
        normalised (for reports).

        Raises:
            FileNotFoundError: the image file does not exist.
            ValueError: it cannot be read, or its size differs from the index's ``ih×iw``.
        """
        from PIL import Image

        row = self.rows[self._index(i)]
        path = self.image_path(i)
        if not os.path.isfile(path):
            raise _missing(path, f"an image named by {os.path.basename(self.index_path)} "
                                 f"line {row.line}")
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"image '{path}' is not a readable image ({e})") from None
        if img.size != (row.iw, row.ih):
            raise ValueError(f"image '{path}' is {img.size[1]}x{img.size[0]} (height x width), "
                             f"but {os.path.basename(self.index_path)} line {row.line} gives "
                             f"ih x iw = {row.ih}x{row.iw}")
        if self.size is not None and img.size != (self.size[1], self.size[0]):
            img = img.resize((self.size[1], self.size[0]), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)

    def __getitem__(self, i: int):
        """Sample ``i``: a float32 torch tensor ``[3, H, W]``, ``(rgb / 255 - mean) / std``."""
        import torch

        x = self.raw_image(i).astype(np.float32) / np.float32(255.0)
        x = (x - self.mean) / self.std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
