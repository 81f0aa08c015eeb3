# One image for every botrelay process: `botrelay ingress`, `botrelay worker`, `botrelay dlq ...`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY ingress ./ingress
COPY worker ./worker
COPY examples ./examples
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin botrelay
# Bots live in /app (mount or COPY your module here): `--app mybot:bot` imports from it.
WORKDIR /app
USER 10001
EXPOSE 8080 9100
# SIGTERM starts the graceful shutdown (BOTRELAY_SHUTDOWN_GRACE); botrelay is PID 1 here.
STOPSIGNAL SIGTERM
ENTRYPOINT ["botrelay"]
CMD ["ingress"]
