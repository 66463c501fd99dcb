"""HTML report of a search result: one card per unit, plots of the IoU distribution and of mean
IoU against formula length, and the units' top activating images with masks drawn over them.

:func:`write_report` writes a self-contained folder that opens in any browser with no network::

    out_dir/index.html        the page: summary, legend, plots, sort/filter controls, cards
    out_dir/img/iou_hist.png  histogram of the units' IoUs
    out_dir/img/iou_by_length.png   mean IoU against the maximum formula length (1..L)
    out_dir/img/uUUUU_R.png   unit UUUU's R-th top activating image with its masks drawn over it

Each card shows the unit's formula, its IoU, the best single concept (the Network Dissection
label) and its IoU, the threshold, the formula length, the best IoU at each maximum length, the
categories of the formula's concepts, and the unit's top activating images (highest peak
activation first, as :func:`compexp_core.analysis.top_activating_samples`). On each image the
unit's mask (its binarised activations, exactly the cells the search scored) is filled in
translucent orange with an orange outline, and the formula's mask is hatched and outlined in
cyan, as Network Dissection reports draw them; masks live on the concepts' grid and are
scaled to the image with nearest-neighbour sampling.

The page sorts its cards by IoU (descending or ascending) or unit, and filters them by concept
category (a unit matches when one of its formula's concepts has that category), with a few
lines of inline JavaScript and no external resources. The state can be given in the address:
``index.html#sort=unit&category=color`` (sort: ``iou-desc``, ``iou-asc`` or ``unit``). When the
page is ready, ``<body>`` carries ``data-ready="1"``. An image that fails to load is reported
with ``console.error``.

Several layers in one report: :func:`write_layers_report` (:mod:`.layers`) writes each layer's
report into a folder of its own and an index page across the layers (units, explained units,
mean IoU and Network Dissection's "N of M units have IoU >= t" per layer, and a chart of
explained units per concept category and layer, each bar linking to the layer's filtered cards).

Units explained on sentence pairs (NLI) get a report of their own, :func:`write_text_report`
(:mod:`.text`): the same page, controls and plots, with each unit's top activating pairs (the
formula's words highlighted), its weight to each class, and the model's accuracy and confusion
matrix where the formula holds.

The package: :mod:`.build` assembles the report (:func:`write_report`), :mod:`.text` the text
report, :mod:`.layers` the reports of several layers and their index, :mod:`.inputs` checks
their inputs, :mod:`.overlays` draws the masks over the images, :mod:`.plots` draws the plots,
:mod:`.contributions` writes the page of contributions of units to classes and of copy-paste
edits (``contributions.html``), and :mod:`.page` fills the HTML, CSS and JavaScript of
``templates/`` (package data).

Units explained on tokens (language-model neurons, SAE features; ``[N_tokens, U]``
activations with a token table) get :func:`write_token_report` (:mod:`.tokens`): the same page,
controls and plots, with each unit's top activating tokens in their context (the firing token,
the tokens where the unit fires and those where the formula holds marked). A token report can
be a layer of :func:`write_layers_report` (``tokens=`` instead of ``images=``).

Command line: ``compexp report RESULTS --images IMAGES [--acts ACTS] [--concepts CONCEPTS]
[-o OUT_DIR] [--lengths RESULTS2] [--top-images 6] [--units 0-9,15]``; several layers:
``compexp report LAYER3 LAYER4 --images IMAGES [--names layer3,layer4] [--threshold 0.04]``;
token units (the activations file has a ``tokens`` group, or ``--tokens FILE``):
``compexp report RESULTS [--tokens FILE] [--top-contexts 8] [--window 5]``.
"""
from .build import write_report
from .contributions import CONTRIBUTIONS_PAGE, write_contributions_page
from .layers import write_layers_report
from .overlays import FORMULA_COLOR, THUMB_SIZE, UNIT_COLOR, overlay
from .text import highlight_words, write_text_report
from .tokens import write_token_report

__all__ = ["write_report", "write_layers_report", "write_text_report", "highlight_words",
           "write_token_report",
           "write_contributions_page", "CONTRIBUTIONS_PAGE", "overlay", "UNIT_COLOR",
           "FORMULA_COLOR", "THUMB_SIZE"]

# ``doctest.testmod`` of this package also runs the examples of what it re-exports.
__test__ = {"write_report": write_report, "write_layers_report": write_layers_report,
            "overlay": overlay,
            "write_text_report": write_text_report, "highlight_words": highlight_words,
            "write_token_report": write_token_report,
            "write_contributions_page": write_contributions_page}
