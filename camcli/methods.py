"""The map methods, in one registry: the parser's choices, the models, the checks and the docs read it.

Adding a method is one entry here and one function in :mod:`camcli.cam` (named by ``function``).
It imports only camcli.errors, so the command line's ``--help`` stays light.
"""

from __future__ import annotations

from dataclasses import dataclass

from camcli.errors import CamcliError


@dataclass(frozen=True)
class Method:
    """A way to make a class map.

    Attributes:
        name: the value of ``method`` (``--method``).
        gradients: whether it weighs the target layer's activations by the class score's
            gradient (exact and without a backward pass on a GAP + linear head, see
            :func:`camcli.cam.head_gradients`; a backward pass in PyTorch on any other head).
        function: the :mod:`camcli.cam` function that makes the map (see its docstring for
            shapes): ``class_maps`` from features and head weights, a gradient method's from one
            image's activations and gradients.
        relu: whether the map keeps only positive evidence (a ReLU before min-max normalization).
        summary: one line for ``--help`` and the README.
        common_scale: whether the maps of different classes are on one scale (the CAM: each
            is the class's logit spread over the grid), so ``normalize shared`` can show them on
            one scale; otherwise (gradient methods: Grad-CAM++'s weights are normalized per
            class, and a weak class's gradients can be as large as the top one's) ``shared``
            scales each map to its own maximum times its probability relative to the most
            probable mapped class (see :func:`camcli.cam.display_maps`).
        perturbation: gradient-free: the weights come from the model's scores of perturbed
            inputs or features (a GAP + linear head only; run through the engine's batches, so
            on ONNX Runtime as well as PyTorch).
        class_free: the map does not depend on the class (every class of an image gets the same
            map), so choosing classes to map (``--class``, ``--maps``) is refused.
        target: what the gradients are of: ``class`` (the class's logit) or ``finer`` (FinerCAM's
            score: the class's logit against its most similar classes', see
            :func:`camcli.cam.finer_score_gradient`).
        many_passes: one forward pass per channel of each image (Score-CAM): jobs map such images
            one at a time, so rows and progress come per image; ``top_channels`` can bound it.
        baseline: a map that knows nothing of the model (noise, a centred Gaussian, the image's
            edges): a method is only to be trusted where it beats them (``evaluate``'s
            side-by-side table). Computed from the model input alone, on any head.
    """

    name: str
    gradients: bool
    function: str
    relu: bool
    summary: str
    common_scale: bool = False
    perturbation: bool = False
    class_free: bool = False
    baseline: bool = False
    target: str = "class"
    many_passes: bool = False


REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("cam", False, "class_maps", False, "the CAM M_c of a GAP + linear head (Zhou et al. 2016), the raw map (boxes: min-max "
           "normalized, no ReLU)", common_scale=True),
    Method("gradcam", True, "gradcam_map", True, "channel weights = mean gradient (Selvaraju et al. 2017)"),
    Method("gradcam++", True, "gradcampp_map", True, "weights from second- and third-order gradient terms (Chattopadhay et al. 2018)"),
    Method("layercam", True, "layercam_map", True, "ReLU(gradient) x activation, per position (Jiang et al. 2021)"),
    Method("hirescam", True, "hirescam_map", True, "gradient x activation summed over channels, no averaging (Draelos & Carin "
           "2020)"),
    Method("xgradcam", True, "xgradcam_map", True, "channel weights = sum(gradient x activation) / sum(activation) (Fu et al. "
           "2020)"),
    Method("gradcamelementwise", True, "gradcamelementwise_map", True, "ReLU(gradient x activation) per position, summed "
           "over channels (pytorch-grad-cam's GradCAMElementWise)"),
    Method("eigencam", True, "eigencam_map", True, "first principal component of the activations: no class, no gradient "
           "(Muhammad & Yeasin 2020)", class_free=True),
    Method("eigengradcam", True, "eigengradcam_map", True, "first principal component of gradient x activation"),
    Method("scorecam", False, "scorecam_map", True, "channel weights = softmax of the class score of the input masked by each "
           "channel: C forward passes per image (Wang et al. 2020)", perturbation=True, many_passes=True),
    Method("ablationcam", False, "ablationcam_map", True, "channel weights = relative drop of the class score when the channel "
           "is ablated (Desai & Ramaswamy 2020)", perturbation=True),
    Method("fem", True, "fem_map", True, "channel weights = fraction of the channel above its mean + 2 std: no class, no "
           "gradient (Fuad et al. 2020)", class_free=True),
    Method("kpcacam", True, "kpcacam_map", True, "first kernel principal component (sigmoid kernel) of the activations: no "
           "class, no gradient (Karmani et al. 2024)", class_free=True),
    Method("finercam", True, "gradcam_map", True, "Grad-CAM of the class's logit against its 3 most similar classes', "
           "weighted by their probabilities: what tells the class from its neighbours (Zhang et al. 2025)", target="finer"),
    Method("random", False, "random_map", False, "baseline: uniform noise, seeded by the image", class_free=True, baseline=True),
    Method("center", False, "center_map", False, "baseline: a centred Gaussian", class_free=True, baseline=True),
    Method("sobel", False, "sobel_map", False, "baseline: edge magnitude of the input (Sobel)", class_free=True, baseline=True),
)}
NAMES = tuple(REGISTRY)  # the parser's choices (with "auto")
AUTO = "auto"  # the model's own default: cam on a GAP + linear head, else gradcam


def get(name: str) -> Method:
    """The registered method ``name``; the error names the choices."""
    if name not in REGISTRY:
        raise CamcliError(f"`method` must be {AUTO} or one of {', '.join(NAMES)}, got {name!r}")
    return REGISTRY[name]


def gradient_methods() -> tuple[str, ...]:
    """The names of the methods a head without a GAP + linear form can use."""
    return tuple(m.name for m in REGISTRY.values() if m.gradients)


def help_text() -> str:
    """``--method``'s help, from the registry: the names; what each does is in the manual (docs/methods.md)."""
    return (f"{AUTO} (cam for a GAP + linear head, else gradcam), or one of: {', '.join(NAMES)}. What each computes, what it "
            "costs and when to trust it: the manual's methods page (docs/methods.md).")
