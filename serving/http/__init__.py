"""The HTTP/REST front end (aiohttp): KServe v2 REST with Triton's binary extension, and the simple API."""
