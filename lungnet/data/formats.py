"""The image file suffixes lungnet reads (decoded by `lungnet.data.images`, found by `lungnet.data.sources`)."""

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}
