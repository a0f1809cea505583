"""Weights of the official Deformable-DETR release and of HF transformers'
DeformableDetrForObjectDetection, renamed into this model's state_dict.

Both sources use a torchvision-, timm- or transformers-named ResNet; ours is
detectron2's ResNet. Every source key is either converted, recognised as a
repeat of another key (the decoder's references to the shared heads), or
reported as unused; nothing is dropped silently.
"""

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

__all__ = [
    "Conversion",
    "Variant",
    "coco_class_names",
    "coco_raw_class_ids",
    "convert_hf_state_dict",
    "convert_official_state_dict",
    "load_conversion",
    "model_variant",
]

Replacement = Union[str, Callable[[re.Match], str]]
Rule = Tuple[str, Replacement]  # (pattern for re.fullmatch, replacement)
_BN = r"(weight|bias|running_mean|running_var)"


@dataclass(frozen=True)
class Variant:
    """The architecture switches a checkpoint must agree on with the config."""

    num_feature_levels: int
    with_box_refine: bool
    two_stage: bool

    def __str__(self):
        kind = (
            "single-scale" if self.num_feature_levels == 1 else f"{self.num_feature_levels}-level"
        )
        refine = "on" if self.with_box_refine else "off"
        return f"{kind}, box refinement {refine}, two-stage {'on' if self.two_stage else 'off'}"


@dataclass
class Conversion:
    """A source state_dict in this model's names.

    state_dict: the converted tensors; variant and num_classes: what the source is.
    unused: source keys that map to nothing here. repeats: source keys that repeat
    another source key's tensor (checked equal) and were not converted twice.
    filled: our keys copied from another head because the source ties them (HF
    saves only head 0 of tied heads).
    """

    state_dict: Dict[str, torch.Tensor]
    variant: Variant
    num_classes: int
    unused: List[str] = field(default_factory=list)
    repeats: List[str] = field(default_factory=list)
    filled: List[str] = field(default_factory=list)

    def select_classes(self, rows: Sequence[int]) -> None:
        """Keep the class-head rows `rows`, in that order: our class k is the
        source's class rows[k] (e.g. coco_raw_class_ids() for 91-way COCO heads).
        A two-stage model's last head scores encoder proposals with its logit 0
        (trained class-agnostic), so that head keeps row 0 first."""
        _select_classes(self.state_dict, rows, self.variant.two_stage)
        self.num_classes = len(rows)

    def summary(self) -> str:
        lines = [
            f"converted {len(self.state_dict)} tensors: {self.variant}, {self.num_classes} classes",
            f"{len(self.repeats)} repeated keys of shared heads (checked equal, converted once)",
        ]
        if self.filled:
            lines.append(
                f"{len(self.filled)} keys filled from tied head 0: {', '.join(self.filled)}"
            )
        lines.append(
            f"{len(self.unused)} unused source keys"
            + (": " + ", ".join(self.unused) if self.unused else "")
        )
        return "\n".join(lines)


def _stage(offset: int, template: str) -> Callable[[re.Match], str]:
    """A replacement that renumbers the stage in group 1 by `offset` (layer1 -> res2)."""

    def replace(m: re.Match) -> str:
        return template.format(int(m.group(1)) + offset, *m.groups()[1:])

    return replace


# torchvision's (and timm's) ResNet names, as the official release and HF's timm backbone use them
TORCHVISION_RESNET: List[Rule] = [
    (r"conv1\.weight", "stem.conv1.weight"),
    (rf"bn1\.{_BN}", r"stem.conv1.norm.\1"),
    (r"layer(\d)\.(\d+)\.conv(\d)\.weight", _stage(1, "res{}.{}.conv{}.weight")),
    (rf"layer(\d)\.(\d+)\.bn(\d)\.{_BN}", _stage(1, "res{}.{}.conv{}.norm.{}")),
    (r"layer(\d)\.(\d+)\.downsample\.0\.weight", _stage(1, "res{}.{}.shortcut.weight")),
    (rf"layer(\d)\.(\d+)\.downsample\.1\.{_BN}", _stage(1, "res{}.{}.shortcut.norm.{}")),
]

# transformers' own ResNet (ResNetBackbone)
TRANSFORMERS_RESNET: List[Rule] = [
    (r"embedder\.embedder\.convolution\.weight", "stem.conv1.weight"),
    (rf"embedder\.embedder\.normalization\.{_BN}", r"stem.conv1.norm.\1"),
    (
        r"encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.convolution\.weight",
        _stage(2, "res{}.{}.shortcut.weight"),
    ),
    (
        rf"encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.normalization\.{_BN}",
        _stage(2, "res{}.{}.shortcut.norm.{}"),
    ),
    (
        r"encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.convolution\.weight",
        lambda m: f"res{int(m[1]) + 2}.{m[2]}.conv{int(m[3]) + 1}.weight",
    ),
    (
        rf"encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.normalization\.{_BN}",
        lambda m: f"res{int(m[1]) + 2}.{m[2]}.conv{int(m[3]) + 1}.norm.{m[4]}",
    ),
]

_TRANSFORMER_GLOBALS = (
    r"(level_embed|(?:reference_points|enc_output|enc_output_norm|pos_trans|pos_trans_norm)\..+)"
)

# (source prefix, our prefix, rules for the rest of the key); the first match wins
RuleSet = List[Tuple[str, str, List[Rule]]]

OFFICIAL_RULES: RuleSet = [
    (r"backbone\.0\.body\.", "backbone.", TORCHVISION_RESNET),
    (
        r"transformer\.",
        "transformer.",
        [
            (_TRANSFORMER_GLOBALS, r"\1"),
            (r"encoder\.layers\.(\d+)\.self_attn\.(.+)", r"encoder.layers.\1.self_attn.\2"),
            (r"encoder\.layers\.(\d+)\.norm1\.(.+)", r"encoder.layers.\1.norm.\2"),
            (r"encoder\.layers\.(\d+)\.linear([12])\.(.+)", r"encoder.layers.\1.ffn.linear\2.\3"),
            (r"encoder\.layers\.(\d+)\.norm2\.(.+)", r"encoder.layers.\1.ffn.norm.\2"),
            (r"decoder\.layers\.(\d+)\.(self_attn|cross_attn)\.(.+)", r"decoder.layers.\1.\2.\3"),
            # official: norm1 follows the cross-attention, norm2 the self-attention; ours go in
            # order
            (r"decoder\.layers\.(\d+)\.norm1\.(.+)", r"decoder.layers.\1.norm2.\2"),
            (r"decoder\.layers\.(\d+)\.norm2\.(.+)", r"decoder.layers.\1.norm1.\2"),
            (r"decoder\.layers\.(\d+)\.linear([12])\.(.+)", r"decoder.layers.\1.ffn.linear\2.\3"),
            (r"decoder\.layers\.(\d+)\.norm3\.(.+)", r"decoder.layers.\1.ffn.norm.\2"),
        ],
    ),
    ("", "", [(r"(query_embed\.weight|input_proj\..+|class_embed\..+|bbox_embed\..+)", r"\1")]),
]
# box refinement and two-stage hand the heads to the decoder: the same tensors again
OFFICIAL_REPEATS: RuleSet = [
    (r"transformer\.decoder\.", "", [(r"((?:class|bbox)_embed\..+)", r"\1")])
]

HF_RULES: RuleSet = [
    # transformers 5 names the backbone model.backbone.model, transformers 4
    # model.backbone.conv_encoder.model;
    # the backbone is transformers' ResNet, or timm's (torchvision's names)
    (
        r"model\.backbone\.(?:conv_encoder\.)?model\.",
        "backbone.",
        TRANSFORMERS_RESNET + TORCHVISION_RESNET,
    ),
    (
        r"model\.",
        "transformer.",
        [
            (_TRANSFORMER_GLOBALS, r"\1"),
            (r"encoder\.layers\.(\d+)\.self_attn\.(.+)", r"encoder.layers.\1.self_attn.\2"),
            (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(.+)", r"encoder.layers.\1.norm.\2"),
            (
                r"encoder\.layers\.(\d+)\.(?:mlp\.)?fc([12])\.(.+)",
                r"encoder.layers.\1.ffn.linear\2.\3",
            ),
            (r"encoder\.layers\.(\d+)\.final_layer_norm\.(.+)", r"encoder.layers.\1.ffn.norm.\2"),
            # separate q, k, v projections: packed into nn.MultiheadAttention's in_proj by
            # _pack_in_proj
            (
                r"decoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)",
                r"decoder.layers.\1.self_attn.in_proj_\3#\2",
            ),
            (
                r"decoder\.layers\.(\d+)\.self_attn\.(?:o_proj|out_proj)\.(.+)",
                r"decoder.layers.\1.self_attn.out_proj.\2",
            ),
            (r"decoder\.layers\.(\d+)\.self_attn_layer_norm\.(.+)", r"decoder.layers.\1.norm1.\2"),
            (r"decoder\.layers\.(\d+)\.encoder_attn\.(.+)", r"decoder.layers.\1.cross_attn.\2"),
            (
                r"decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.(.+)",
                r"decoder.layers.\1.norm2.\2",
            ),
            (
                r"decoder\.layers\.(\d+)\.(?:mlp\.)?fc([12])\.(.+)",
                r"decoder.layers.\1.ffn.linear\2.\3",
            ),
            (r"decoder\.layers\.(\d+)\.final_layer_norm\.(.+)", r"decoder.layers.\1.ffn.norm.\2"),
        ],
    ),
    (
        r"model\.",
        "",
        [
            (r"query_position_embeddings\.weight", "query_embed.weight"),
            (r"(input_proj\..+)", r"\1"),
        ],
    ),
    ("", "", [(r"((?:class|bbox)_embed\..+)", r"\1")]),
]
HF_REPEATS: RuleSet = [(r"model\.decoder\.", "", [(r"((?:class|bbox)_embed\..+)", r"\1")])]

_HEAD_KEY = re.compile(r"(class|bbox)_embed\.(\d+)\.(.+)")


def _rename(key: str, rules: RuleSet) -> Optional[str]:
    for prefix, target, patterns in rules:
        head = re.match(prefix, key)
        if head is None:
            continue
        rest = key[head.end() :]
        for pattern, replacement in patterns:
            m = re.fullmatch(pattern, rest)
            if m is not None:
                return target + (
                    m.expand(replacement) if isinstance(replacement, str) else replacement(m)
                )
    return None


def _pack_in_proj(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Join "X#q", "X#k", "X#v" into X = cat(q, k, v), nn.MultiheadAttention's layout."""
    packed = {k: v for k, v in state_dict.items() if "#" not in k}
    for name in sorted({k.split("#")[0] for k in state_dict if "#" in k}):
        parts = [state_dict.get(f"{name}#{p}") for p in "qkv"]
        if any(p is None for p in parts):
            raise ValueError(f"{name}: the checkpoint has only some of the q, k, v projections")
        packed[name] = torch.cat(parts, 0)
    return packed


def _convert(
    source: Dict[str, torch.Tensor], rules: RuleSet, repeat_rules: RuleSet
) -> Tuple[Dict[str, torch.Tensor], List[str], List[str]]:
    """(converted, unused keys, repeated keys) of a source state_dict."""
    converted, unused, repeat_targets = {}, [], {}
    for key, tensor in source.items():
        ours = _rename(key, rules)
        if ours is not None:
            if ours in converted:
                raise ValueError(f"two checkpoint keys map to {ours!r}; the second is {key!r}")
            converted[ours] = tensor
            continue
        repeated = _rename(key, repeat_rules)
        if repeated is not None:
            repeat_targets[key] = repeated
        else:
            unused.append(key)
    for key, ours in repeat_targets.items():
        if ours not in converted:  # the primary copy was not saved: this one is it
            converted[ours] = source[key]
        elif not torch.equal(converted[ours], source[key]):
            raise ValueError(
                f"{key!r} should repeat the tensor converted to {ours!r} but differs from it"
            )
    return _pack_in_proj(converted), unused, list(repeat_targets)


def _num_heads(state_dict: Dict[str, torch.Tensor], kind: str) -> int:
    indices = {
        int(m[2]) for m in map(_HEAD_KEY.fullmatch, state_dict) if m is not None and m[1] == kind
    }
    return max(indices) + 1 if indices else 0


def _variant(state_dict: Dict[str, torch.Tensor], with_box_refine: bool) -> Variant:
    if "transformer.level_embed" not in state_dict:
        raise ValueError("not a Deformable DETR checkpoint: it has no transformer level embedding")
    return Variant(
        num_feature_levels=state_dict["transformer.level_embed"].shape[0],
        with_box_refine=with_box_refine,
        two_stage="transformer.enc_output.weight" in state_dict,
    )


def _num_classes(state_dict: Dict[str, torch.Tensor]) -> int:
    if "class_embed.0.weight" not in state_dict:
        raise ValueError("the checkpoint has no class head (class_embed.0.weight)")
    return state_dict["class_embed.0.weight"].shape[0]


def _select_classes(
    state_dict: Dict[str, torch.Tensor], rows: Sequence[int], two_stage: bool
) -> None:
    """Conversion.select_classes, in place on the state_dict."""
    num_heads = _num_heads(state_dict, "class")
    available = state_dict["class_embed.0.weight"].shape[0]
    if max(rows) >= available:
        raise ValueError(
            f"the class map reads row {max(rows)} of the class heads, which have {available} rows"
        )
    for key in list(state_dict):
        m = _HEAD_KEY.fullmatch(key)
        if m is None or m[1] != "class":
            continue
        head_rows = list(rows)
        if two_stage and int(m[2]) == num_heads - 1:
            head_rows = [0] + [r for r in rows if r != 0][: len(rows) - 1]
        index = torch.as_tensor(head_rows, device=state_dict[key].device)
        state_dict[key] = state_dict[key].index_select(0, index)


def convert_official_state_dict(state_dict: Dict[str, torch.Tensor]) -> Conversion:
    """The official release's `checkpoint["model"]` in our names."""
    converted, unused, repeats = _convert(state_dict, OFFICIAL_RULES, OFFICIAL_REPEATS)
    with_box_refine = any(k.startswith("transformer.decoder.bbox_embed.") for k in state_dict)
    return Conversion(
        converted, _variant(converted, with_box_refine), _num_classes(converted), unused, repeats
    )


def convert_hf_state_dict(
    state_dict: Dict[str, torch.Tensor],
    with_box_refine: Optional[bool] = None,
    num_decoder_layers: Optional[int] = None,
) -> Conversion:
    """A transformers DeformableDetrForObjectDetection state_dict in our names.

    HF ties every class head (and, without box refinement, every box head) to
    head 0, and saving keeps one copy of tied tensors: missing heads are filled
    from head 0, which is what HF computes with.

    Args:
        with_box_refine, num_decoder_layers: from the model's config.json; when
            None, box refinement is read from the state_dict (the decoder's box
            heads, or box heads that differ) and the layer count from the
            decoder layers.
    """
    converted, unused, repeats = _convert(state_dict, HF_RULES, HF_REPEATS)
    if num_decoder_layers is None:
        layers = {
            int(m[1])
            for m in (re.match(r"transformer\.decoder\.layers\.(\d+)\.", k) for k in converted)
            if m
        }
        num_decoder_layers = max(layers) + 1 if layers else 0
    if with_box_refine is None:
        with_box_refine = any(
            k.startswith("model.decoder.bbox_embed.") for k in state_dict
        ) or _box_heads_differ(converted)
    variant = _variant(converted, with_box_refine)
    num_heads = num_decoder_layers + (1 if variant.two_stage else 0)
    tied_kinds = (
        ("class",) if with_box_refine else ("class", "bbox")
    )  # HF's box heads are untied with refinement
    filled = []
    for key in list(converted):
        m = _HEAD_KEY.fullmatch(key)
        if m is None or m[2] != "0" or m[1] not in tied_kinds:
            continue
        for i in range(1, num_heads):
            tied = f"{m[1]}_embed.{i}.{m[3]}"
            if tied not in converted:
                converted[tied] = converted[key]
                filled.append(tied)
    return Conversion(converted, variant, _num_classes(converted), unused, repeats, filled)


def _box_heads_differ(state_dict: Dict[str, torch.Tensor]) -> bool:
    """Whether box head 1 has a tensor unlike box head 0's (untied heads: refinement)."""
    pairs = [
        (v, state_dict.get("bbox_embed.0." + k[len("bbox_embed.1.") :]))
        for k, v in state_dict.items()
        if k.startswith("bbox_embed.1.")
    ]
    return any(head0 is not None and not torch.equal(v, head0) for v, head0 in pairs)


def coco_raw_class_ids() -> List[int]:
    """The COCO category ids (1..90, with gaps) of detectron2's 80 contiguous
    classes, in contiguous order: the rows of a 91-way COCO class head."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [c["id"] for c in COCO_CATEGORIES if c["isthing"]]


def coco_class_names() -> List[str]:
    """detectron2's 80 COCO class names, in contiguous order."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    return [c["name"] for c in COCO_CATEGORIES if c["isthing"]]


def model_variant(model) -> Variant:
    return Variant(model.num_feature_levels, model.with_box_refine, model.two_stage)


def load_conversion(model, conversion: Conversion) -> None:
    """Load a conversion into `model`, strictly: the variant, the class count, every
    key and every shape must agree, with an error that says which do not."""
    expected = model_variant(model)
    if conversion.variant != expected:
        raise ValueError(
            f"the checkpoint is {conversion.variant}, but the config builds {expected}: pick the "
            "config of the checkpoint's variant"
        )
    if conversion.num_classes != model.num_classes:
        raise ValueError(
            f"the checkpoint has {conversion.num_classes} classes and the config "
            f"{model.num_classes}; for the official 91-way COCO heads convert with the COCO class "
            "map"
        )
    ours = model.state_dict()
    missing = sorted(set(ours) - set(conversion.state_dict))
    extra = sorted(set(conversion.state_dict) - set(ours))
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(ours[k].shape)}"
        for k, v in conversion.state_dict.items()
        if k in ours and v.shape != ours[k].shape
    ]
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} model keys not in the checkpoint: {', '.join(missing[:20])}"
        )
    if extra:
        problems.append(
            f"{len(extra)} converted keys the model does not have: {', '.join(extra[:20])}"
        )
    if shapes:
        problems.append(f"{len(shapes)} shapes differ: {'; '.join(shapes[:20])}")
    if problems:
        raise ValueError(
            "the converted checkpoint does not fit the model:\n  " + "\n  ".join(problems)
        )
    model.load_state_dict(conversion.state_dict, strict=True)
