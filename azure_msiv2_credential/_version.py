"""Package version and the User-Agent it announces."""

VERSION = "0.1.0"
USER_AGENT = f"azure-msiv2-credential/{VERSION}"
