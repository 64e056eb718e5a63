"""Studies from a PACS over DICOMweb (QIDO-RS search, WADO-RS retrieve, STOW-RS store), through dicomweb-client.

An image argument ``dicomweb:URL`` (e.g. ``dicomweb:http://pacs:8042/dicom-web``) names a server; ``--study``,
``--series`` and QIDO filters (``Modality=CT``) pick one series. Its instances are retrieved into a cache folder,
one file per SOPInstanceUID (``CACHE/STUDY/SERIES/SOP.dcm``, written atomically), so a second run re-reads nothing
from the server; the cached folder is then read like any DICOM folder (:mod:`spatial_al.io.dicom`).

Credentials never travel on the command line (where ``ps``, shell history and run records would show them):
``SPATIAL_AL_DICOMWEB_TOKEN`` (bearer), or ``SPATIAL_AL_DICOMWEB_USER`` and ``SPATIAL_AL_DICOMWEB_PASSWORD`` (basic),
or a JSON file (``SPATIAL_AL_DICOMWEB_CONFIG``, default ``~/.config/spatial-al/dicomweb.json``) of the form
``{"servers": [{"url": "https://pacs/dicom-web", "token": "..."} or {"url": ..., "username": ..., "password": ...}]}``,
matched by the longest URL prefix. A URL holding ``user:password@`` is refused. Messages name the server by its
URL only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..files import atomic_path
from .dicom import DicomSeries, DicomSeriesError, choose_series, newest_segmentations, require_dicom_libraries

SCHEME = "dicomweb:"
TIMEOUT_SECONDS = 30.0
RETRY_ATTEMPTS, RETRY_WAIT_MS = 3, 250
CACHE_VARIABLE = "SPATIAL_AL_DICOMWEB_CACHE"
CONFIG_VARIABLE = "SPATIAL_AL_DICOMWEB_CONFIG"
TOKEN_VARIABLE = "SPATIAL_AL_DICOMWEB_TOKEN"
USER_VARIABLE, PASSWORD_VARIABLE = "SPATIAL_AL_DICOMWEB_USER", "SPATIAL_AL_DICOMWEB_PASSWORD"
NOT_IMAGE_MODALITIES = {"SEG", "SR", "KO", "PR", "RTSTRUCT", "RTPLAN", "RTRECORD", "REG", "DOC", "PLAN"}
# DICOM JSON tags read from QIDO answers
STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
MODALITY, DESCRIPTION, INSTANCE_COUNT = "00080060", "0008103E", "00201209"


class DicomWebError(ValueError):
    """A DICOMweb server cannot be reached or refuses a request (the message names the server, the cause and the
    fix, never a credential)."""


def is_dicomweb(argument: object) -> bool:
    return isinstance(argument, str) and argument.startswith(SCHEME)


@dataclass(frozen=True)
class DicomWebServer:
    """A DICOMweb service: its URL (without ``dicomweb:``) and where retrieved instances are cached."""

    url: str
    cache: Path = field(default_factory=lambda: default_cache())

    @classmethod
    def from_argument(cls, argument: str, cache: str | Path | None = None) -> DicomWebServer:
        require_dicom_libraries()
        url = argument[len(SCHEME) :].rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DicomWebError(
                f"{argument!r} is not a DICOMweb address; write dicomweb:http://HOST:PORT/PATH (e.g. "
                "dicomweb:http://127.0.0.1:8042/dicom-web)."
            )
        if parts.username or parts.password:
            raise DicomWebError(
                "The DICOMweb address holds a user name or password; a credential on the command line is seen by "
                f"every user of the machine and kept in shell history. Set {USER_VARIABLE} and {PASSWORD_VARIABLE} "
                f"(or {TOKEN_VARIABLE}, or the file {CONFIG_VARIABLE} names) and give the address without it."
            )
        return cls(url, Path(cache) if cache is not None else default_cache())

    def client(self):
        """A dicomweb-client for this server, with the credentials the environment or config file gives."""
        from dicomweb_client import DICOMwebClient
        from dicomweb_client.session_utils import create_session

        session = create_session()
        credentials = credentials_for(self.url)
        if "token" in credentials:
            session.headers["Authorization"] = f"Bearer {credentials['token']}"
        elif "username" in credentials:
            session.auth = (credentials["username"], credentials.get("password", ""))
        client = DICOMwebClient(self.url, session=session, timeout=TIMEOUT_SECONDS)
        # dicomweb-client retries every failed request (a refused connection too) 5 times with waits of 2 to 16 s:
        # 30 s before a down server is reported. Three attempts 0.5 and 1 s apart still ride out a busy server's 503.
        client.set_http_retry_params(max_attempts=RETRY_ATTEMPTS, wait_exponential_multiplier=RETRY_WAIT_MS)
        return client

    def call(self, what: str, request, *arguments, **keywords):
        """``request(*arguments, **keywords)`` with connection, timeout and HTTP failures turned into
        :class:`DicomWebError` naming the server, what was asked and what to do."""
        import requests

        try:
            return request(*arguments, **keywords)
        except requests.exceptions.Timeout:
            raise DicomWebError(
                f"The DICOMweb server {self.url} did not answer within {TIMEOUT_SECONDS:.0f} s ({what}). Check that "
                "it runs and is not overloaded, then try again."
            ) from None
        except requests.exceptions.ConnectionError:
            raise DicomWebError(
                f"Cannot reach the DICOMweb server {self.url} ({what}): nothing answers there. Check the address "
                "and port, and that the server runs."
            ) from None
        except requests.exceptions.HTTPError as error:
            status = error.response.status_code if error.response is not None else 0
            fixes = {
                401: f"it needs credentials: set {TOKEN_VARIABLE}, or {USER_VARIABLE} and {PASSWORD_VARIABLE}, or "
                f"the file {CONFIG_VARIABLE} names",
                403: "the credentials were accepted but are not allowed this; ask the PACS administrator",
                404: "check the address's path (often /dicom-web) and the study and series UIDs",
            }
            fix = fixes.get(status, "see the server's log")
            raise DicomWebError(f"The DICOMweb server {self.url} refused {what} (HTTP {status}): {fix}.") from None

    def find_series(self, filters: Mapping[str, str]) -> list[dict]:
        """QIDO-RS series matching ``filters`` (DICOM keywords or tags: StudyInstanceUID, Modality, ...)."""
        client = self.client()
        filters = dict(filters)
        study = filters.pop("StudyInstanceUID", None)
        fields = ["SeriesDescription", "NumberOfSeriesRelatedInstances", "Modality", "StudyInstanceUID"]
        return self.call(
            "a series search (QIDO-RS)",
            client.search_for_series,
            study_instance_uid=study,
            search_filters=filters,
            fields=fields,
            get_remaining=True,
        )

    def image_entries(self, filters: Mapping[str, str]) -> list[dict]:
        """QIDO-RS answers for the series matching ``filters`` that hold images (segmentations, reports, key
        objects, presentation states and RT objects left out)."""
        return [entry for entry in self.find_series(filters) if qido_value(entry, MODALITY) not in NOT_IMAGE_MODALITIES]

    def series(self, filters: Mapping[str, str]) -> DicomSeries:
        """The one image series matching ``filters``, retrieved into the cache (only instances not cached yet).

        Raises:
            DicomWebError: the server cannot be reached or refuses; DicomSeriesError: no matching image series, or
            several (the message lists them; --series picks one).
        """
        found = self.image_entries(filters)
        if not found:
            raise DicomSeriesError(
                f"The DICOMweb server {self.url} holds no image series matching {_describe(filters)}. Check the "
                "study and series UIDs (or search with --qido Modality=CT)."
            )
        if len(found) > 1:
            listing = "\n".join(
                f"  {qido_value(e, SERIES_UID)}  {qido_value(e, MODALITY) or '?'}  {qido_value(e, DESCRIPTION)!r}  "
                f"{qido_value(e, INSTANCE_COUNT) or '?'} instances"
                for e in found
            )
            raise DicomSeriesError(
                f"The DICOMweb server {self.url} holds {len(found)} image series matching {_describe(filters)}; "
                f"choose one with --series UID:\n{listing}"
            )
        folder = self.retrieve(qido_value(found[0], STUDY_UID), qido_value(found[0], SERIES_UID))
        return choose_series(folder)

    def image_series(self, filters: Mapping[str, str]) -> list[DicomSeries]:
        """Every image series matching ``filters`` (SEGs left out), retrieved into the cache."""
        found = self.image_entries(filters)
        return [choose_series(self.retrieve(qido_value(e, STUDY_UID), qido_value(e, SERIES_UID))) for e in found]

    def retrieve(self, study_uid: str, series_uid: str) -> Path:
        """The series' cache folder, holding every instance the server lists (those missing retrieved now)."""
        client = self.client()
        folder = self.cache / study_uid / series_uid
        instances = self.call(
            f"the instance list of series {series_uid} (QIDO-RS)",
            client.search_for_instances,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            fields=["SOPInstanceUID"],
            get_remaining=True,
        )
        missing = [uid for uid in (qido_value(e, SOP_UID) for e in instances) if not (folder / f"{uid}.dcm").is_file()]
        if len(missing) == len(instances) and missing:
            what = f"series {series_uid} (WADO-RS)"
            for dataset in self.call(what, client.retrieve_series, study_uid, series_uid):
                _cache(folder, dataset)
        else:
            for uid in missing:
                _cache(
                    folder, self.call(f"instance {uid} (WADO-RS)", client.retrieve_instance, study_uid, series_uid, uid)
                )
        return folder

    def retrieve_segmented(self, filters: Mapping[str, str]) -> list[Path]:
        """Cache folders of the SEG series matching ``filters`` and of the image series they reference."""
        import pydicom

        folders = set()
        for entry in self.find_series({**filters, "Modality": "SEG"}):
            study = qido_value(entry, STUDY_UID)
            folder = self.retrieve(study, qido_value(entry, SERIES_UID))
            folders.add(folder)
            for path in folder.glob("*.dcm"):
                for item in getattr(pydicom.dcmread(path, stop_before_pixels=True), "ReferencedSeriesSequence", []):
                    folders.add(self.retrieve(study, str(item.SeriesInstanceUID)))
        return sorted(folders)

    def newest_segmentation_of(self, series: DicomSeries) -> Path | None:
        """The cached file of the newest DICOM-SEG in ``series``' study that references it (None when none does)."""
        found = self.find_series({"StudyInstanceUID": series.study_uid, "Modality": "SEG"})
        folders = [self.retrieve(series.study_uid, qido_value(entry, SERIES_UID)) for entry in found]
        return newest_segmentations(folders).get(series.series_uid, (None, None))[0]

    def store(self, path: str | Path) -> str:
        """STOW-RS one DICOM file; returns its SOPInstanceUID.

        Raises:
            DicomWebError: the server refused the instance (the message says why); one instance is stored whole or
            not at all, so the study on the server is left as it was.
        """
        import pydicom

        dataset = pydicom.dcmread(path)
        answer = self.call(f"storing {Path(path).name} (STOW-RS)", self.client().store_instances, [dataset])
        failed = getattr(answer, "FailedSOPSequence", None)
        if failed:
            reason = getattr(failed[0], "FailureReason", "?")
            raise DicomWebError(
                f"The DICOMweb server {self.url} did not store {Path(path).name} (failure reason {reason}); the "
                f"file is kept at {path}."
            )
        return str(dataset.SOPInstanceUID)


def _cache(folder: Path, dataset) -> Path:
    """Write a retrieved instance as ``folder/SOP.dcm``, atomically (a file meta header added where missing)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    if not getattr(dataset, "file_meta", None) or "TransferSyntaxUID" not in dataset.file_meta:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = dataset.SOPClassUID
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dataset.file_meta = meta
    path = folder / f"{dataset.SOPInstanceUID}.dcm"
    with atomic_path(path) as temporary:
        dataset.save_as(temporary, enforce_file_format=True)
    return path


def qido_value(entry: Mapping, tag: str) -> str:
    """The first value of ``tag`` (8 hex digits) in a QIDO-RS answer's DICOM JSON entry; empty when absent."""
    values = entry.get(tag, {}).get("Value", [])
    return str(values[0]) if values else ""


def _describe(filters: Mapping[str, str]) -> str:
    return ", ".join(f"{key}={value}" for key, value in filters.items()) or "(no filter)"


def default_cache() -> Path:
    """``SPATIAL_AL_DICOMWEB_CACHE``, else ``$XDG_CACHE_HOME/spatial-al/dicomweb`` (``~/.cache/...``)."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spatial-al" / "dicomweb"


def credentials_for(url: str) -> dict[str, str]:
    """The credentials for ``url``: the environment variables first, then the config file's longest matching URL
    prefix; empty when none is set.

    Raises:
        DicomWebError: an unreadable config file (named, its content never quoted).
    """
    if os.environ.get(TOKEN_VARIABLE):
        return {"token": os.environ[TOKEN_VARIABLE]}
    if os.environ.get(USER_VARIABLE):
        return {"username": os.environ[USER_VARIABLE], "password": os.environ.get(PASSWORD_VARIABLE, "")}
    path = Path(os.environ.get(CONFIG_VARIABLE) or Path.home() / ".config" / "spatial-al" / "dicomweb.json")
    if not path.is_file():
        return {}
    try:
        servers = json.loads(path.read_text())["servers"]
        matching = [entry for entry in servers if url.startswith(str(entry["url"]).rstrip("/"))]
    except (ValueError, KeyError, TypeError):
        raise DicomWebError(
            f"The DICOMweb credentials file {str(path)!r} is not of the form "
            '{"servers": [{"url": ..., "token": ...} or {"url": ..., "username": ..., "password": ...}]}.'
        ) from None
    if not matching:
        return {}
    best = max(matching, key=lambda entry: len(str(entry["url"])))
    return {key: str(best[key]) for key in ("token", "username", "password") if key in best}
