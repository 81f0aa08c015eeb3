# One image for every botrelay process: `botrelay ingress`, `botrelay worker`, `botrelay dlq ...`.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY ingress ./ingress
COPY worker ./worker
COPY botrelay ./botrelay
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin botrelay \
    && install -d -o 10001 -m 0700 /var/lib/botrelay/spool
# Bots live in /app, which `--app` imports from: the build copies the folder BOT_DIR of the
# context there (`docker build --build-arg BOT_DIR=mybot .`, then `--app mybot.bot:bot`), or
# mount your code at /app. The default is examples/, so `--app examples.echo_bot:bot` runs.
# /var/lib/botrelay/spool is the ingress's BOTRELAY_SPOOL_DIR in compose.yaml and deploy/k8s;
# it exists here, owned by the botrelay user, so a fresh volume mounted there is writable.
ARG BOT_DIR=examples
WORKDIR /app
COPY ${BOT_DIR} /app/${BOT_DIR}
USER 10001
EXPOSE 8080 9100
# SIGTERM starts the graceful shutdown (BOTRELAY_SHUTDOWN_GRACE); botrelay is PID 1 here.
STOPSIGNAL SIGTERM
ENTRYPOINT ["botrelay"]
CMD ["ingress"]
