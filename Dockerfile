# The shipped image: the static binary and nothing else.
#   scripts/dist            # or: just dist
#   docker build -t codereview .
#   docker run -p 8080:8080 -e PORT=8080 codereview --insecure   # TLS terminated in front
#   docker run -p 50051:50051 -v $PWD/certs/dev:/certs:ro -v $PWD/secret:/secret:ro codereview \
#       --addr 0.0.0.0:50051 --tls-cert /certs/server.pem --tls-key /certs/server.key --auth-secret-file /secret
# Without --addr the server binds 0.0.0.0:$PORT (the container-platform convention),
# which needs TLS and a token secret, or --insecure.
FROM scratch
COPY target/x86_64-unknown-linux-gnu/dist/codereview /codereview
USER 65532:65532
ENV PORT=50051
EXPOSE 50051
ENTRYPOINT ["/codereview", "serve"]
