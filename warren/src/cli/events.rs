//! `warren events`: the cluster's committed changes as they happen, one line each.

use super::args::{Format, KindArg};
use super::client::{call, status_error, Client};
use super::render::cluster::EventView;
use super::render::emit;
use anyhow::Result;
use warren_proto::v1 as pb;

pub async fn run(c: &mut Client, kinds: Vec<KindArg>, format: Format) -> Result<()> {
    let kinds = kinds
        .into_iter()
        .map(|k| {
            let kind = match k {
                KindArg::Service => pb::ObjectKind::Service,
                KindArg::Task => pb::ObjectKind::Task,
                KindArg::Node => pb::ObjectKind::Node,
                KindArg::Secret => pb::ObjectKind::Secret,
                KindArg::Volume => pb::ObjectKind::Volume,
                KindArg::Cluster => pb::ObjectKind::Cluster,
                KindArg::Config => pb::ObjectKind::Config,
            };
            kind as i32
        })
        .collect();
    let mut stream = call(c.watch_events(pb::WatchEventsRequest { kinds })).await?;
    while let Some(ev) = stream.message().await.map_err(status_error)? {
        let ev = EventView::from_pb(ev);
        if format == Format::Json {
            emit(&ev.json_line()?)?;
        } else {
            emit(&ev.text_line())?;
        }
    }
    Ok(())
}
