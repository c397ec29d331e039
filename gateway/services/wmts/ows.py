"""OWS 1.1 building blocks of the WMTS front: XML helpers and ExceptionReports (OGC 06-121r3
section 8), with the exceptionCode, locator and HTTP status WMTS 1.0.0 gives them (07-057r7
Tables 21 and 24)."""

from __future__ import annotations

from typing import Final, NamedTuple

from aiohttp import web
from lxml import etree

from gateway.logs import printable

OWS_NS: Final = "http://www.opengis.net/ows/1.1"
XLINK_NS: Final = "http://www.w3.org/1999/xlink"
XSI_NS: Final = "http://www.w3.org/2001/XMLSchema-instance"
# The WMTS version every document and exception report of this service carries.
VERSION: Final = "1.0.0"
_EXCEPTION_SCHEMA: Final = f"{OWS_NS} http://schemas.opengis.net/ows/1.1.0/owsExceptionReport.xsd"


class OwsException(NamedTuple):
    """One ``ows:Exception``: its exceptionCode (06-121r3 Table 25 or 07-057r7 Table 24), the
    locator (the offending parameter, or ``None``) and a human-readable text."""

    code: str
    locator: str | None
    text: str


class WmtsError(Exception):
    """A request the service answers with an ExceptionReport of ``exceptions``, HTTP
    ``status`` (07-057r7 Tables 21 and 24: the status of the first exception) and ``headers``."""

    def __init__(
        self, status: int, *exceptions: OwsException, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(exceptions[0].text)
        self.status = status
        self.exceptions = exceptions
        # Further headers of the answer, such as a 503's Retry-After.
        self.headers = headers or {}


def missing(locator: str) -> OwsException:
    """MissingParameterValue for the parameter ``locator``."""
    return OwsException("MissingParameterValue", locator, f"the request has no {locator} value")


def invalid(locator: str, text: str) -> OwsException:
    """InvalidParameterValue for the parameter ``locator``, saying ``text``."""
    return OwsException("InvalidParameterValue", locator, text)


def ows(tag: str) -> str:
    """``tag`` in the OWS 1.1 namespace."""
    return f"{{{OWS_NS}}}{tag}"


def child(
    parent: etree._Element,
    tag: str,
    text: str | None = None,
    href: str | None = None,
    **attrib: str,
) -> etree._Element:
    """A new ``tag`` element under ``parent``, with ``text``, ``xlink:href`` and attributes."""
    element = etree.SubElement(parent, tag, attrib)
    if href is not None:
        element.set(f"{{{XLINK_NS}}}href", href)
    if text is not None:
        element.text = text
    return element


def serialise(root: etree._Element) -> bytes:
    """``root`` as a UTF-8 XML document with its declaration, indented."""
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def exception_report(error: WmtsError) -> web.Response:
    """The OWS 1.1 ExceptionReport (06-121r3 section 8.5) for ``error``, as
    ``application/xml`` with ``error.status`` and ``Cache-Control: no-store``.

    ``version`` is the service version (required by owsExceptionReport.xsd); exceptions without
    a locator omit the attribute, as VersionNegotiationFailed and NoApplicableCode require.
    """
    root = etree.Element(
        ows("ExceptionReport"), nsmap={"ows": OWS_NS, "xsi": XSI_NS}, version=VERSION
    )
    root.set(f"{{{XSI_NS}}}schemaLocation", _EXCEPTION_SCHEMA)
    root.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    for exception in error.exceptions:
        element = child(root, ows("Exception"), exceptionCode=exception.code)
        if exception.locator is not None:
            element.set("locator", exception.locator)
        child(element, ows("ExceptionText"), exception.text)
    return web.Response(
        body=serialise(root),
        status=error.status,
        content_type="application/xml",
        headers={"Cache-Control": "no-store", **error.headers},
    )


def render_error(request: web.Request, status: int, message: str) -> web.Response:
    """The WMTS front's error format for routing misses and unexpected errors: NoApplicableCode
    with ``status``; a path the front does not know is named (the ETS probes
    ``<ServiceMetadataURL>/Bogus`` and expects a 404 ExceptionReport)."""
    if status == 404:
        # Shown escaped: control characters cannot be written in XML, nor sent to a log.
        message = f"no WMTS resource {printable(request.path, 1000)}"
    return exception_report(WmtsError(status, OwsException("NoApplicableCode", None, message)))
