"""DICOM-SEG (Segmentation Storage) from and to a :class:`~spatial_al.io.segmentation.Segmentation`, through highdicom.

Written: a BINARY segmentation (what Slicer's QuantitativeReporting and dcmqi read) that references its source
series, one segment per structure with its name as SegmentLabel, its colour, SNOMED CT category and type codes found
from the name (a generic "Tissue" code otherwise), and algorithm type SEMIAUTOMATIC (with the propagation method as
the algorithm) for segments holding propagated slices, MANUAL for the others.

What DICOM has no attribute for (the slice record: which slices a person annotated, which were propagated; segment
IDs, label values and layers as Slicer had them) is kept as JSON in one private element of the SEG,
``(0099,xx10)`` of private creator ``SpatialActiveLearning 1`` (see :data:`PRIVATE_CREATOR`). Readers that do not
know it ignore it; :func:`read_dicom_seg` restores every segment's tags from it.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import numpy as np

from ..annotation_record import SliceRecord
from ..files import atomic_path
from ..volume import Geometry, Segment
from .dicom import SEGMENTATION_STORAGE, DicomSeries, kji_volume_geometry, require_dicom_libraries, volume_to_kji
from .segmentation import Segmentation, default_color, segment_color

PRIVATE_GROUP = 0x0099
PRIVATE_CREATOR = "SpatialActiveLearning 1"
# UT: JSON {"segments": [{"number", "id", "name", "label_value", "layer", "color", "tags"}, ...]}
PRIVATE_RECORD_ELEMENT = 0x10
SEGMENTATION_TYPES = ("BINARY", "LABELMAP")


class DicomSegError(ValueError):
    """A DICOM-SEG cannot be read or written as asked (the message names the problem and the fix)."""


def property_codes(name: str):
    """(category, type) SNOMED CT codes of a structure named ``name`` ("right lung" -> Anatomical Structure, Lung);
    ("Tissue", "Tissue") when no code of pydicom's dictionary matches the name or its last word."""
    from pydicom.sr.codedict import codes

    words = re.findall(r"[a-z0-9]+", name.lower())
    candidates = ["".join(w.capitalize() for w in words)]
    if words:
        last = words[-1]
        candidates += [last.capitalize(), last[:-1].capitalize() if last.endswith("s") else ""]
    for candidate in filter(None, candidates):
        try:
            found = getattr(codes.SCT, candidate)
        except AttributeError:
            continue
        return codes.SCT.AnatomicalStructure, found
    return codes.SCT.Tissue, codes.SCT.Tissue


def _algorithm(segment: Segment, software_version: str):
    """(algorithm type, identification) of a segment: SEMIAUTOMATIC with the propagation method where the slice
    record lists propagated slices, MANUAL otherwise."""
    import highdicom
    from pydicom.sr.codedict import codes

    from ..propagation import PROPAGATORS
    from ..propagation.base import method_info

    record = SliceRecord.from_tags(segment.tags, segment.name)
    if record is None or not record.propagated:
        return highdicom.seg.SegmentAlgorithmTypeValues.MANUAL, None
    method = record.method or "unknown"
    learned = method in PROPAGATORS and method_info(PROPAGATORS.get(method)).model is not None
    family = codes.DCM.ArtificialIntelligence if learned else codes.DCM.ImageProcessing
    identification = highdicom.AlgorithmIdentificationSequence(
        name=f"SpatialActiveLearning {method} propagation", family=family, version=software_version
    )
    return highdicom.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC, identification


def write_dicom_seg(
    path: str | Path,
    segmentation,
    source: DicomSeries,
    segmentation_type: str = "BINARY",
    workers: int = 0,
    series_description: str = "Segmentation (SpatialActiveLearning)",
) -> Path:
    """Write ``segmentation`` as a DICOM-SEG referencing ``source``, atomically.

    Args:
        path: the ``.dcm`` file to write.
        segmentation: on the source series' grid (the grid :meth:`DicomSeries.read` returns).
        source: the series the segmentation was drawn on (its headers are the SEG's source images).
        segmentation_type: "BINARY" (every reader) or "LABELMAP" (DICOM 2024; one layer of segments only).
        workers: processes (or an Executor) highdicom encodes frames with; 0 encodes in this process.
        series_description: SeriesDescription of the new SEG series.

    Raises:
        DicomSegError: the segmentation is not on the series' grid, or LABELMAP asked for overlapping segments.
    """
    require_dicom_libraries()
    import highdicom
    from pydicom.uid import generate_uid

    from ..provenance import package_versions

    if segmentation_type not in SEGMENTATION_TYPES:
        raise DicomSegError(
            f"Unknown DICOM-SEG type {segmentation_type!r}; use one of {', '.join(SEGMENTATION_TYPES)}."
        )
    grid = source.geometry()
    differences = grid.differences(segmentation.geometry)
    if differences:
        raise DicomSegError(
            f"The segmentation is not on the grid of series {source.series_uid} ({'; '.join(differences)}); a "
            "DICOM-SEG is written on the series it segments. Propagate or predict on that series' folder."
        )
    if not segmentation.segments:
        raise DicomSegError("The segmentation has no segment; a DICOM-SEG holds at least one.")
    version = package_versions(("spatial-active-learning",)).get("spatial-active-learning") or "unknown"
    descriptions, record = [], []
    for number, segment in enumerate(segmentation.segments, start=1):
        category, kind = property_codes(segment.name)
        algorithm_type, identification = _algorithm(segment, version)
        color = segment.color if segment.color is not None else segment_color(segmentation.segments, number - 1)
        descriptions.append(
            highdicom.seg.SegmentDescription(
                segment_number=number,
                segment_label=segment.name[:64],
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=algorithm_type,
                algorithm_identification=identification,
                display_color=highdicom.color.CIELabColor.from_rgb(*(float(c) for c in color)),
            )
        )
        record.append(
            {
                "number": number,
                "id": segment.segment_id,
                "name": segment.name,
                "label_value": segment.label_value,
                "layer": segment.layer,
                "color": [float(c) for c in color],
                "tags": dict(segment.tags),
            }
        )
    pixels = _segment_pixels(segmentation, segmentation_type)
    if source.is_multiframe:  # frames are placed by the volume's geometry, not matched one to one to source frames
        pixels = kji_volume_geometry(grid, source.frame_of_reference_uid).with_array(pixels)
    with warnings.catch_warnings():  # highdicom's own SpacingBetweenSlices may exceed a DS: corrected below
        warnings.filterwarnings("ignore", "The value length")
        seg = highdicom.seg.Segmentation(
            source_images=list(source.headers),
            pixel_array=pixels,
            segmentation_type=segmentation_type,
            segment_descriptions=descriptions,
            series_instance_uid=generate_uid(),
            series_number=int(getattr(source.headers[0], "SeriesNumber", 0) or 0) + 1000,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="SpatialActiveLearning",
            manufacturer_model_name="spatial-al",
            software_versions=version,
            device_serial_number="none",
            content_label="SEGMENTATION",
            content_description="Annotated and propagated slices",
            series_description=series_description,
            pixel_measures=None if source.is_multiframe else _pixel_measures(grid, source),  # a Volume carries its own
            omit_empty_frames=True,
            workers=workers,
        )
    seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SpacingBetweenSlices = round(grid.spacing[2], 6)
    block = seg.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(PRIVATE_RECORD_ELEMENT, "UT", json.dumps({"segments": record}, separators=(",", ":")))
    path = Path(path)
    with atomic_path(path) as temporary:
        seg.save_as(temporary, enforce_file_format=True)
    return path


def _pixel_measures(grid: Geometry, source: DicomSeries):
    """PixelMeasuresSequence of the grid, its numbers rounded to what a DS (16 characters) holds."""
    import highdicom

    thickness = getattr(source.headers[0], "SliceThickness", None) or grid.spacing[2]
    return highdicom.PixelMeasuresSequence(
        pixel_spacing=[round(grid.spacing[1], 6), round(grid.spacing[0], 6)],
        slice_thickness=round(float(thickness), 6),
        spacing_between_slices=round(grid.spacing[2], 6),
    )


def _segment_pixels(segmentation, segmentation_type: str) -> np.ndarray:
    """(K, J, I) segment numbers where segments do not overlap, else (K, J, I, S) bool (one mask per segment)."""
    layers = segmentation.label_layers
    if layers.shape[0] == 1:
        largest = max(segment.label_value for segment in segmentation.segments)
        numbers = np.zeros(max(largest, int(layers.max(initial=0))) + 1, dtype=np.uint16)
        for number, segment in enumerate(segmentation.segments, start=1):
            numbers[segment.label_value] = number
        return numbers.astype(np.uint8 if len(segmentation.segments) < 256 else np.uint16)[layers[0]]
    if segmentation_type == "LABELMAP":
        raise DicomSegError(
            f"The segmentation has {layers.shape[0]} layers of overlapping segments, which a LABELMAP SEG cannot "
            "hold; write it as BINARY."
        )
    return np.stack([layers[s.layer] == s.label_value for s in segmentation.segments], axis=-1)


def is_dicom_seg(path: str | Path) -> bool:
    """True for a file that is a DICOM Segmentation Storage instance."""
    path = Path(path)
    if not path.is_file():
        return False
    with path.open("rb") as file:
        if file.read(132)[128:] != b"DICM":
            return False
    require_dicom_libraries()
    import pydicom

    header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    return str(getattr(header, "SOPClassUID", "")) == SEGMENTATION_STORAGE


def read_dicom_seg(path: str | Path):
    """A DICOM-SEG as a :class:`~spatial_al.io.segmentation.Segmentation` on the grid its frames span.

    Segments are named by their SegmentLabel; where this project wrote the SEG, segment IDs, label values, layers,
    colours and tags (the slice record) come back as they were. Other SEGs get segments in one layer where none
    overlap (label value = segment number), more layers where they do. ``referenced_series_uid`` is the series the
    SEG segments (:func:`~spatial_al.io.segmentation.place_on_grid` maps it onto that series' grid).

    Raises:
        DicomSegError: a FRACTIONAL SEG (probabilities: threshold it first), or frames that are not one grid.
    """
    import highdicom

    path = Path(path)
    import pydicom

    syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.get("TransferSyntaxUID")
    if syntax is not None and not syntax.is_little_endian:
        raise DicomSegError(
            f"The DICOM-SEG {str(path)!r} is stored big endian ({syntax.name}, retired from DICOM), which highdicom "
            "does not read. Convert it to little endian first, e.g. DCMTK's dcmconv +te IN OUT."
        )
    try:
        seg = highdicom.seg.segread(str(path))
    except Exception as error:  # highdicom and pydicom raise several types
        raise DicomSegError(f"Could not read the DICOM-SEG {str(path)!r}: {error}") from None
    if seg.segmentation_type.value == "FRACTIONAL":
        raise DicomSegError(
            f"The DICOM-SEG {str(path)!r} is FRACTIONAL (a probability or occupancy per voxel), not labels. "
            "Threshold it into a BINARY SEG first (e.g. dcmqi's segimage2itkimage, then threshold at 0.5)."
        )
    numbers = list(seg.get_segment_numbers())
    try:
        volume = seg.get_volume(combine_segments=False, segment_numbers=numbers, dtype=np.uint8)
    except (ValueError, RuntimeError) as error:
        raise DicomSegError(
            f"The frames of the DICOM-SEG {str(path)!r} do not form one regular volume ({error}); it cannot be "
            "placed on a grid."
        ) from None
    masks, geometry = volume_to_kji(volume)  # masks: (K, J, I, S)
    written = {entry["number"]: entry for entry in _private_record(seg)}
    segments, layer_of = [], []
    occupied: list[np.ndarray] = []
    for index, number in enumerate(numbers):
        mask = masks[..., index].astype(bool)
        entry = written.get(number)
        description = seg.get_segment_description(number)
        if entry is not None:
            layer = int(entry["layer"])
            segments.append(
                Segment(
                    name=entry["name"],
                    label_value=int(entry["label_value"]),
                    layer=layer,
                    color=tuple(entry["color"]),
                    segment_id=entry["id"],
                    tags=dict(entry["tags"]),
                )
            )
        else:
            layer = next((n for n, taken in enumerate(occupied) if not np.any(taken & mask)), len(occupied))
            color = getattr(description, "RecommendedDisplayCIELabValue", None)
            rgb = highdicom.color.CIELabColor.from_dicom_value(color).to_rgb() if color else default_color(index)
            segments.append(
                Segment(
                    name=str(description.SegmentLabel),
                    label_value=number,
                    layer=layer,
                    color=tuple(float(c) / (255.0 if max(rgb) > 1 else 1.0) for c in rgb),
                    segment_id=f"Segment_{number}",
                )
            )
        while len(occupied) <= layer:
            occupied.append(np.zeros(mask.shape, dtype=bool))
        occupied[layer] |= mask
        layer_of.append((layer, mask))
    largest = max(segment.label_value for segment in segments)
    labels = np.zeros((len(occupied), *geometry.shape), dtype=np.uint8 if largest < 256 else np.uint16)
    for segment, (layer, mask) in zip(segments, layer_of, strict=True):
        labels[layer][mask] = segment.label_value
    referenced = getattr(seg, "ReferencedSeriesSequence", None)
    series_uid = str(referenced[0].SeriesInstanceUID) if referenced else None
    return Segmentation(labels, tuple(segments), geometry, referenced_series_uid=series_uid)


def _private_record(seg) -> list[dict]:
    """The segments this project recorded in the SEG's private element (empty for other writers' SEGs)."""
    try:
        block = seg.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        return list(json.loads(block[PRIVATE_RECORD_ELEMENT].value)["segments"])
    except (KeyError, ValueError, TypeError):
        return []
