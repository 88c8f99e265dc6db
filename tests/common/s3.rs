//! A real S3 server that we did not write, in-process on loopback: `s3s-fs` (a folder per
//! bucket served over the S3 API, SigV4 checked by `s3s`). Used by the storage tests and the
//! record_load bench (STORAGE=1).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// An s3s-fs server on loopback; stopping it aborts its open connections too.
pub struct S3Server {
    /// Where it listens.
    pub addr: SocketAddr,
    root: PathBuf,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl S3Server {
    /// Serves `root` (a folder per bucket) on `addr` (port 0: any), accepting `key`/`secret`.
    pub async fn start(root: &Path, addr: SocketAddr, key: &str, secret: &str) -> Self {
        use hyper_util::rt::TokioIo;
        let fs = s3s_fs::FileSystem::new(root).expect("s3s-fs root");
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(key, secret));
        let service = builder.build();
        // The port may still be held for a moment after a stop.
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                    _ = token.cancelled() => break,
                };
                let service = service.clone();
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            connections.abort_all();
        });
        Self {
            addr,
            root: root.to_owned(),
            stop,
            task,
        }
    }

    /// Its base URL (`--s3-endpoint`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The stored object `key` of `bucket`.
    pub fn object_in(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        std::fs::read(self.root.join(bucket).join(key)).ok()
    }

    /// Stops it (open connections cut); returns its address, to start again on it.
    pub async fn stop(self) -> SocketAddr {
        self.stop.cancel();
        let _ = self.task.await;
        self.addr
    }
}
