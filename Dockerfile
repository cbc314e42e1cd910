# The example apps (example_apps/) in one image; docker-compose.yml picks the app by command.
#   docker build -t asgi-micro-examples .
#   docker run --rm -p 8000:8000 asgi-micro-examples     # the greeter on the embedded defaults
FROM python:3.11-slim

COPY --from=ghcr.io/astral-sh/uv:0.5 /uv /bin/uv

WORKDIR /app
ENV PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1

# The library with every integration's extra; the example apps change more often, so last.
COPY pyproject.toml README.md LICENSE ./
COPY asgi_micro asgi_micro
COPY integrations integrations
RUN uv pip install --system ".[all]"
COPY example_apps example_apps

# The embedded defaults keep their files (SQLite, local JWT keys) under .micro/ in here.
RUN useradd --system --uid 10001 --home-dir /app micro && mkdir .micro && chown micro .micro
USER micro

EXPOSE 8000
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=6 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/_micro/health', timeout=2).status != 200)"]
# Bound to every interface; the node registers the container's own address.
CMD ["asgi-micro", "run", "example_apps/greeter/app.py", "--host", "0.0.0.0", "--port", "8000"]
