"""The page: an image, a vocabulary, methods side by side (Gradio Blocks).

The page sends only an uploaded file, text, and choices among lists the server made (method names,
example names, class-list names); an upload is decoded into server memory for the session (``gr.State``)
and its file deleted at once. Each offered method has a fixed column; the columns of the chosen methods
show their result. Element ids (``status``, ``slot-<i>``, ``header-<i>``, ``labels-<i>``) are what the
browser tests look for.
"""
import logging
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .inputs import InputError, Limits, dataset_class_lists, parse_vocabulary, read_upload, shapes_examples
from .methods import Method, ModelCache
from .render import request_folder, run_method

__all__ = ["build_page", "segment"]

logger = logging.getLogger(__name__)
Image = Optional[Tuple[np.ndarray, str]]  # the session's image and its name


def _error(message: str) -> str:
    return f"**Error:** {message}"


def method_table(methods: Sequence[Method]) -> str:
    """Markdown list of the offered methods with the config and weights each uses."""
    if not methods:
        return ("**No method can run here.** CLIPtrase needs the shapes CLIP (shipped with the package); LDVC "
                "needs a trained model: run `make demo` first, or start the app with `--method NAME=CONFIG@WEIGHTS`.")
    rows = ["| method | config | weights |", "|---|---|---|"]
    rows += [f"| {m.name} | `{m.config}` | {f'`{m.weights}`' if m.weights else 'none (training-free)'} |"
             for m in methods]
    return "\n".join(rows)


def load_upload(path: Optional[str], limits: Limits, upload_root: str) -> Tuple[Image, Optional[np.ndarray], str]:
    """(session image, preview, status) for an upload event; a bad file leaves no image and says why."""
    if not path:
        return None, None, ""
    try:
        image, name = read_upload(path, limits, upload_root)
    except InputError as e:
        return None, None, _error(str(e))
    except Exception as e:  # never a stack trace on the page
        logger.exception("Reading an upload failed")
        return None, None, _error(f"the upload could not be read ({type(e).__name__}).")
    return (image, name), image, f"Image '{name}' ({image.shape[1]}x{image.shape[0]}) is ready."


def _slug(text: str) -> str:
    return "_".join("".join(c if c.isalnum() else " " for c in text).split())


def _file_stem(image_name: str, method_name: str) -> str:
    """'scene.png', 'LDVC (shapes)' -> 'LDVC_shapes_scene': the download's name (letters, digits, _), the method
    first so that names stay distinct when a long one is cut."""
    return f"{_slug(method_name)[:48] or 'method'}_{_slug(image_name.rsplit('.', 1)[0])[:32] or 'image'}"


def segment(cache: ModelCache, methods: Sequence[Method], limits: Limits, results_root: str, image: Image,
            vocabulary: str, class_list: Optional[str], chosen: Sequence[str], want_scores: bool,
            threshold: float = 0.0, progress=None) -> Tuple[str, List]:
    """(status, results per offered method: a MethodResult, or None when not chosen or not run)."""
    nothing = [None] * len(methods)
    try:
        if image is None:
            raise InputError("No image: upload one, or pick one of the examples.")
        names = parse_vocabulary(vocabulary, limits.max_classes)
        if not chosen:
            raise InputError("No method chosen: tick at least one.")
        by_name = {m.name: m for m in methods}
        unknown = [c for c in chosen if c not in by_name]
        if unknown:
            raise InputError(f"Unknown method(s) {unknown}; choose among {list(by_name)}.")
        try:
            threshold = float(threshold or 0.0)
        except (TypeError, ValueError):
            raise InputError(f"The score threshold must be a number in [0, 1], got {threshold!r}.") from None
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"The score threshold must be in [0, 1], got {threshold}.")
    except InputError as e:
        return _error(str(e)), nothing
    lists = dataset_class_lists(limits.max_classes)
    seen = lists[class_list][1] if class_list in lists and lists[class_list][0] == names else []
    pixels, name = image
    folder = request_folder(results_root)
    results = list(nothing)
    for k, method in enumerate(m for m in methods if m.name in chosen):
        if progress is not None:
            progress(k / len(chosen), desc=f"running {method.name}")
        results[methods.index(method)] = run_method(cache, method, pixels, names, seen, want_scores=want_scores,
                                                     out_dir=folder, stem=_file_stem(name, method.name),
                                                     threshold=threshold)
    failed = sum(r is not None and bool(r.error) for r in results)
    calibration = f", seen-score calibration on {len(seen)} seen classes" if seen else ""
    status = (f"Segmented '{name}' ({pixels.shape[1]}x{pixels.shape[0]}) into {len(names)} classes with "
              f"{len(chosen)} method(s){calibration}." + (f" {failed} failed: see below." if failed else ""))
    return status, results


def build_page(methods: Sequence[Method], cache: ModelCache, limits: Limits, results_root: str,
               upload_root: str):
    """The gr.Blocks of the app (not launched)."""
    import gradio as gr

    examples = shapes_examples()
    lists = dataset_class_lists(limits.max_classes)
    methods = list(methods)
    with gr.Blocks(title="ldvc_d2: open-vocabulary segmentation", delete_cache=(60, 300)) as page:
        gr.Markdown("# Open-vocabulary segmentation\nYour image, any vocabulary, several methods side by side.")
        image_state = gr.State(None, time_to_live=1800)
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label=f"Image (PNG, JPEG, BMP, TIFF, WebP; up to {limits.max_bytes // 2**20} MiB, "
                                       f"{limits.max_pixels / 1e6:.0f} Mpixels)", type="filepath", elem_id="upload")
                example = gr.Dropdown(list(examples), value=None, label="... or a shapes benchmark example",
                                      elem_id="example")
                preview = gr.Image(label="input", interactive=False, height=200, elem_id="preview")
            with gr.Column(scale=2):
                vocabulary = gr.Textbox(label=f"Vocabulary: class names separated by commas (at most "
                                              f"{limits.max_classes})", lines=2, elem_id="vocabulary",
                                        placeholder="e.g. plain red shape, striped blue shape, dotted green shape")
                class_list = gr.Dropdown(list(lists), value=None, elem_id="class-list",
                                         label="... or a dataset's class list (its seen classes get the seen-score "
                                               "calibration while the text is unchanged)")
                chosen = gr.CheckboxGroup([m.name for m in methods], value=[m.name for m in methods[:1]],
                                          label="Methods", elem_id="methods")
                with gr.Row():
                    threshold = gr.Slider(0.0, 1.0, 0.0, step=0.05, elem_id="threshold",
                                          label="score threshold (pixels below it are unlabelled; 0 labels all)")
                    want_scores = gr.Checkbox(False, label="per-class score maps (slower)", elem_id="want-scores")
                run = gr.Button("Segment", variant="primary", elem_id="run")
        status = gr.Markdown("", elem_id="status")
        slots = []
        with gr.Row(equal_height=False):
            for i, m in enumerate(methods):
                with gr.Column(visible=False, elem_id=f"slot-{i}", min_width=320) as column:
                    header = gr.Markdown(elem_id=f"header-{i}")
                    overlay = gr.Image(label="overlay and legend", interactive=False, buttons=["download"],
                                       elem_id=f"overlay-{i}")
                    colours = gr.Image(label="label map", interactive=False, buttons=["download"],
                                       elem_id=f"colours-{i}")
                    labels = gr.File(label="label map PNG (pixel = class index)", interactive=False,
                                     elem_id=f"labels-{i}")
                    scores = gr.Image(label="class scores", interactive=False, buttons=["download"], visible=False,
                                      elem_id=f"scores-{i}")
                slots.append((column, header, overlay, colours, labels, scores))
        with gr.Accordion("Methods on this server", open=False):
            gr.Markdown(method_table(methods))

        def on_upload(path):  # the file is read and deleted: the widget is emptied for the next upload
            return (*load_upload(path, limits, upload_root), None)

        def on_example(label):
            if label not in examples:
                return gr.update(), gr.update(), gr.update()
            return (examples[label], label), examples[label], f"Example '{label}' is ready."

        def on_class_list(label):
            return ", ".join(lists[label][0]) if label in lists else gr.update()

        def on_run(image, text, listed, picked, scores_wanted, score_threshold, progress=gr.Progress()):
            message, results = segment(cache, methods, limits, results_root, image, text, listed, picked or [],
                                       bool(scores_wanted), score_threshold, progress)
            updates = [message]
            for result in results:
                if result is None:
                    updates += [gr.update(visible=False), "", None, None, None, gr.update(visible=False, value=None)]
                    continue
                updates += [gr.update(visible=True), result.header, result.overlay, result.label_colours,
                            result.labels_file, gr.update(visible=result.scores is not None, value=result.scores)]
            return updates

        upload.upload(on_upload, [upload], [image_state, preview, status, upload], concurrency_limit=4)
        example.change(on_example, [example], [image_state, preview, status], concurrency_limit=4)
        class_list.change(on_class_list, [class_list], [vocabulary], concurrency_limit=4)
        run.click(on_run, [image_state, vocabulary, class_list, chosen, want_scores, threshold],
                  [status] + [c for slot in slots for c in slot], concurrency_limit=1, concurrency_id="models")
    return page
