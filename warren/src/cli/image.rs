//! `warren image load`: streams an image archive to the manager, which imports it on
//! the chosen nodes; one line per node.

use super::args::ImageCmd;
use super::client::{status_error, Client};
use super::render::{error_line, line};
use anyhow::{anyhow, bail, Context, Result};
use warren_proto::v1 as pb;

pub async fn run(c: &mut Client, cmd: ImageCmd) -> Result<()> {
    let ImageCmd::Load { file, nodes } = cmd;
    let mut reader: Box<dyn std::io::Read + Send> = if file == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(std::fs::File::open(&file).with_context(|| format!("opening {file}"))?)
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::LoadImageChunk {
        part: Some(pb::load_image_chunk::Part::Header(pb::LoadImageHeader { nodes })),
    })
    .await
    .map_err(|_| anyhow!("the upload stopped"))?;
    let reading = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = std::io::Read::read(&mut reader, &mut buf).with_context(|| format!("reading {file}"))?;
            if n == 0 {
                return Ok(());
            }
            let chunk = pb::LoadImageChunk {
                part: Some(pb::load_image_chunk::Part::Data(buf[..n].to_vec())),
            };
            if tx.blocking_send(chunk).is_err() {
                return Ok(());
            }
        }
    });
    let reply = c
        .clone()
        .max_encoding_message_size(8 << 20)
        .load_image(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    reading.await.map_err(|e| anyhow!("{e}"))??;
    let reply = reply.map_err(status_error)?.into_inner();
    let mut failed = 0;
    for r in &reply.results {
        if r.error.is_empty() {
            line(&format!("{}: loaded {}", r.node, r.images.join(", ")))?;
        } else {
            failed += 1;
            error_line(&format!("{}: {}", r.node, r.error));
        }
    }
    if failed > 0 {
        bail!(
            "the image could not be loaded on {failed} of {} nodes",
            reply.results.len()
        );
    }
    Ok(())
}
