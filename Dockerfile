# The keyherald image: every service of docker-compose.yml runs a `keyherald …` command in it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY issuer ./issuer
COPY subscriber ./subscriber
COPY relay ./relay
COPY keyherald ./keyherald
RUN pip install '.[demo]' && rm -rf /src

# Services never need root.
RUN useradd --system --no-create-home --shell /usr/sbin/nologin keyherald
USER keyherald
WORKDIR /home

CMD ["keyherald", "--help"]
