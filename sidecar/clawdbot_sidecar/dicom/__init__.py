"""DICOM in requests: parsed and de-identified in the sidecar before the cloud sees an image.

:mod:`.table` is PS3.15 Annex E's attribute table as data, :mod:`.profile` applies it,
:mod:`.pixels` renders a frame as PNG and summarises the header, :mod:`.convert` joins them
for one file and :mod:`.requests` finds DICOM parts in chat requests. pydicom (the
``dicom`` extra) is imported only when a file is converted.
"""
