"""The XMP packet every generated PNG carries (an ``iTXt`` chunk with keyword ``XML:com.adobe.xmp``).

What it says, by namespace (how to read it: ``docs/provenance.md``):

* ``Iptc4xmpExt:DigitalSourceType``: the IPTC code for media made by a trained model,
  ``http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia``;
* the AI properties of the IPTC Photo Metadata Standard 2025.1: ``Iptc4xmpExt:AISystemUsed``,
  ``Iptc4xmpExt:AISystemVersionUsed`` and ``Iptc4xmpExt:AIPromptInformation`` (plain text, one
  value each). The names are the standard's XMP ids, as published in the IPTC TechReference
  https://iptc.org/std/photometadata/specification/iptc-pmd-techreference_2025.1.yml (2025-11-04)
  and announced at https://iptc.org/news/2025/11 ("AI System Used", "AI System Version Used",
  "AI Prompt Information", "AI Prompt Writer Name"); the writer name is never filled (the pipeline
  does not know who wrote a prompt line);
* ``xmp:CreatorTool``, ``xmp:CreateDate`` (the run's logical date), ``dc:description``;
* ``xmpMM:InstanceID`` and ``xmpMM:DocumentID``, the same id as the C2PA manifest's instance id;
* our own ``aigc`` namespace (``urn:aigc-pipeline:xmp:1.0/``): job, item id, seed, model sha256,
  label, and the watermark record when a watermark was asked for.

The packet is a pure function of its inputs (fixed property order, no timestamps of its own), so
the PNG bytes stay the same from run to run.

    >>> "trainedAlgorithmicMedia" in xmp_packet(XmpFields(job="j", item_id="s1", seed=1, model_sha256="ab",
    ...     system="aigc-pipeline", system_version="0.1.0", created="2026-11-28T00:00:00Z"))
    True
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass, field

from pipeline.encode import IPTC_TRAINED_ALGORITHMIC_MEDIA, SOFTWARE

KEYWORD = "XML:com.adobe.xmp"  # the PNG iTXt keyword of an XMP packet (XMP Specification Part 3, 1.1.5)
AIGC_NS = "urn:aigc-pipeline:xmp:1.0/"
NAMESPACES = (
    ("dc", "http://purl.org/dc/elements/1.1/"),
    ("xmp", "http://ns.adobe.com/xap/1.0/"),
    ("xmpMM", "http://ns.adobe.com/xap/1.0/mm/"),
    ("Iptc4xmpExt", "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"),
    ("aigc", AIGC_NS),
)
# XML 1.0 allows tab, newline, carriage return and everything from U+0020 up, bar surrogates and U+FFFE/F.
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class XmpFields:
    """What one asset's packet says; ``prompt`` is None when the job keeps prompts out of its assets."""

    job: str
    item_id: str
    seed: int
    model_sha256: str
    system: str  # Iptc4xmpExt:AISystemUsed: the engine and model kind
    system_version: str  # Iptc4xmpExt:AISystemVersionUsed
    created: str  # xmp:CreateDate, ISO 8601
    prompt: str | None = None
    label: int | None = None
    instance_id: str = ""  # xmpMM:InstanceID; default: derived from the job, item and model
    extra: dict[str, str] = field(default_factory=dict)  # more aigc: properties (name -> text), e.g. watermark
    medium: str = "image"  # what dc:description calls the asset ("image", "audio clip")


def instance_uuid(job: str, date: str, item_id: str, model_sha256: str) -> uuid.UUID:
    """A version-4-shaped UUID derived from what identifies an asset, so reruns name it the same way.

    Shared by the XMP ``xmpMM:InstanceID`` and the C2PA manifest's label and instance id.
    """
    digest = hashlib.sha256("\x00".join(("aigc-asset/1", job, date, item_id, model_sha256)).encode()).digest()
    return uuid.UUID(bytes=digest[:16], version=4)


def escape(text: str) -> str:
    """``text`` as XML character data: markup escaped, characters XML 1.0 forbids replaced by U+FFFD."""
    text = _NOT_XML.sub("\ufffd", str(text))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def description(f: XmpFields) -> str:
    """dc:description: one sentence a person reads in any viewer that shows captions."""
    made = (f"AI-generated {f.medium} (IPTC trainedAlgorithmicMedia) made by {f.system} "
            f"(model sha256 {f.model_sha256[:12]})")
    what = f"from the prompt \u201c{f.prompt}\u201d" if f.prompt is not None else "from a latent seed"
    return f"{made} {what}; job {f.job}, item {f.item_id}."


def xmp_packet(f: XmpFields) -> str:
    """The packet as text (UTF-8 when encoded); deterministic for equal fields."""
    iid = f.instance_id or f"xmp:iid:{instance_uuid(f.job, f.created[:10], f.item_id, f.model_sha256)}"
    props = [
        ("Iptc4xmpExt:DigitalSourceType", IPTC_TRAINED_ALGORITHMIC_MEDIA),
        ("Iptc4xmpExt:AISystemUsed", f.system),
        ("Iptc4xmpExt:AISystemVersionUsed", f.system_version),
    ]
    if f.prompt is not None:
        props.append(("Iptc4xmpExt:AIPromptInformation", f.prompt))
    props += [
        ("xmp:CreatorTool", SOFTWARE),
        ("xmp:CreateDate", f.created),
        ("xmpMM:InstanceID", iid),
        ("xmpMM:DocumentID", iid.replace("xmp:iid:", "xmp:did:", 1)),
        ("aigc:job", f.job),
        ("aigc:item_id", f.item_id),
        ("aigc:seed", str(f.seed)),
        ("aigc:model_sha256", f.model_sha256),
    ]
    if f.label is not None:
        props.append(("aigc:label", str(f.label)))
    props += [(f"aigc:{k}", v) for k, v in sorted(f.extra.items())]
    ns = "".join(f'\n    xmlns:{p}="{uri}"' for p, uri in NAMESPACES)
    body = "".join(f"\n   <{k}>{escape(v)}</{k}>" for k, v in props)
    desc = (f'\n   <dc:description>\n    <rdf:Alt>\n     <rdf:li xml:lang="x-default">{escape(description(f))}'
            "</rdf:li>\n    </rdf:Alt>\n   </dc:description>")
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
            ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
            f'  <rdf:Description rdf:about=""{ns}>{body}{desc}\n'
            '  </rdf:Description>\n'
            ' </rdf:RDF>\n'
            '</x:xmpmeta>\n'
            '<?xpacket end="r"?>')
