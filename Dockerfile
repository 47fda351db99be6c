# One image for every Procfile process: web, worker, clock and release (`pruner check`).
# Build: docker build -t pruner .   Run all of it: docker compose up (docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=5000

WORKDIR /app

# Dependencies first, pinned by constraints.txt (the same pins CI tests), so a code change
# does not reinstall them. Only the runtime dependencies: no dev extras in the image.
COPY pyproject.toml constraints.txt ./
COPY rules ./rules
COPY webhooks ./webhooks
COPY worker ./worker
RUN pip install -c constraints.txt . \
    && useradd --create-home --uid 10001 pruner

# The Procfile runs from the repository root: gunicorn reads gunicorn.conf.py from here.
COPY Procfile gunicorn.conf.py ./

# Not root: a compromised request handler gets no more than the app's own files.
USER pruner
EXPOSE 5000

# The web process by default; compose (or the platform) overrides the command for the
# others, with exactly the Procfile's lines.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "webhooks:create_app()"]
