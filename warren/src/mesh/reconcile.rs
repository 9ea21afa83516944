//! The mesh's reconciler: one task that reads the device, the link and the
//! routes, plans the steps and applies them, on every change of the peers, of the
//! wireguard-go generation, or on a command (rotation, stop). Not the setup
//! (`MeshConfig::build`) nor the plan itself (`plan`).

use super::*;

/// The reconciler's state: the configuration, the seams, the keys and the peers.
pub(super) struct Reconciler {
    pub(super) iface: String,
    pub(super) plan: PlanConfig,
    pub(super) backend: Arc<dyn WgBackend>,
    pub(super) link: Arc<dyn MeshLink>,
    pub(super) keys: KeyStore,
    pub(super) key: PrivateKey,
    pub(super) next: Option<PrivateKey>,
    pub(super) peers: Vec<MeshPeer>,
    pub(super) tries: Endpoints,
}

impl Reconciler {
    /// One pass: read, plan, apply. Every step runs even if an earlier one fails
    /// (one bad route must not hold back a peer); the first error is returned.
    pub(super) async fn reconcile(&mut self) -> Result<Vec<Step>, MeshError> {
        let device = self.backend.get().await?;
        if device.is_none() && self.backend.kind() == BackendKind::Userspace {
            // wireguard-go is (re)starting; its readiness triggers the next pass.
            return Ok(Vec::new());
        }
        let now = SystemTime::now();
        for p in device.iter().flat_map(|d| &d.peers) {
            if let (Some(e), Some(t)) = (p.endpoint, p.last_handshake) {
                if now.duration_since(t).unwrap_or_default() < HANDSHAKE_FRESH {
                    self.tries.learned.insert(p.public_key, e);
                }
            }
        }
        let mut done = Vec::new();
        let mut first_err: Option<MeshError> = None;
        for step in plan_device(&self.plan, &self.key, &self.peers, device.as_ref(), &self.tries, now) {
            let u = match &step {
                Step::Configure(u) | Step::Peers(u) => u,
                _ => unreachable!("plan_device plans device steps only"),
            };
            match self.backend.set(u).await {
                Ok(()) => {
                    for p in u.peers.iter().filter(|p| !p.remove) {
                        if let Some(e) = p.endpoint {
                            self.tries.tried.insert(p.public_key, (e, now));
                        }
                    }
                    done.push(step);
                }
                Err(e) => {
                    tracing::warn!(iface = %self.iface, step = %step, error = %e, "mesh step failed");
                    first_err.get_or_insert(e.into());
                }
            }
        }
        let known: std::collections::BTreeSet<PublicKey> = self
            .peers
            .iter()
            .flat_map(|p| std::iter::once(p.public_key).chain(p.next_public_key))
            .collect();
        self.tries.tried.retain(|k, _| known.contains(k));

        let link = self.link.link(&self.iface).await?;
        let routes = self.link.routes().await?;
        let (steps, conflicts) = plan_link(&self.plan, &self.peers, link.as_ref(), &routes);
        for step in steps {
            let index = link.map(|l| l.index).unwrap_or(0);
            let r = match &step {
                Step::SetMtu(m) => self.link.set_mtu(&self.iface, index, *m).await,
                Step::SetUp => self.link.set_up(&self.iface, index).await,
                Step::Route { destination, target } => {
                    self.link
                        .replace_route(&self.iface, *destination, self.plan.route_protocol, *target)
                        .await
                }
                Step::DeleteRoute(r) => self.link.delete_route(&self.iface, *r).await,
                Step::Configure(_) | Step::Peers(_) => unreachable!("plan_link plans link steps only"),
            };
            match r {
                Ok(()) => done.push(step),
                Err(e) => {
                    tracing::warn!(iface = %self.iface, step = %step, error = %e, "mesh step failed");
                    first_err.get_or_insert(e);
                }
            }
        }
        for (destination, protocol) in conflicts {
            tracing::warn!(%destination, protocol, "mesh route conflicts with a route warren does not own");
            first_err.get_or_insert(MeshError::RouteConflict { destination, protocol });
        }
        if !done.is_empty() {
            let list: Vec<String> = done.iter().map(|s| s.to_string()).collect();
            tracing::info!(iface = %self.iface, steps = ?list, "mesh reconciled");
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// A keepalive to every peer of the device ([`plan_kick`]).
    pub(super) async fn kick(&self) -> Result<Vec<Step>, MeshError> {
        let device = self.backend.get().await?;
        match plan_kick(&self.plan, device.as_ref()) {
            Some(step) => {
                if let Step::Peers(u) = &step {
                    self.backend.set(u).await?;
                }
                Ok(vec![step])
            }
            None => Ok(Vec::new()),
        }
    }

    pub(super) async fn status(&self) -> Result<MeshStatus, MeshError> {
        let device = self.backend.get().await?;
        let owner = |k: &PublicKey| {
            self.peers
                .iter()
                .find(|p| p.public_key == *k || p.next_public_key == Some(*k))
                .map(|p| p.node_id.clone())
        };
        let up = device.is_some();
        let dev = device.unwrap_or_default();
        Ok(MeshStatus {
            interface: self.iface.clone(),
            backend: self.backend.kind(),
            public_key: self.key.public_key(),
            next_public_key: self.next.as_ref().map(|k| k.public_key()),
            listen_port: dev.listen_port,
            mtu: self.plan.mtu,
            up,
            peers: dev
                .peers
                .iter()
                .map(|p| PeerStatus {
                    node_id: owner(&p.public_key),
                    public_key: p.public_key,
                    endpoint: p.endpoint,
                    allowed_ips: p.allowed_ips.clone(),
                    keepalive_secs: p.keepalive,
                    last_handshake: p.last_handshake,
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                })
                .collect(),
        })
    }

    /// Removes the mesh's routes and, for the kernel backend, its interface.
    pub(super) async fn remove(&self) -> Result<(), MeshError> {
        let mut first_err = None;
        for r in self.link.routes().await? {
            if r.protocol == self.plan.route_protocol {
                if let Err(e) = self.link.delete_route(&self.iface, r).await {
                    first_err.get_or_insert(e);
                }
            }
        }
        if self.backend.kind() == BackendKind::Kernel {
            if let Some(l) = self.link.link(&self.iface).await? {
                if let Err(e) = self.link.delete_link(&self.iface, l.index).await {
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    pub(super) fn rotating_peers(&self) -> bool {
        self.peers.iter().any(|p| p.next_public_key.is_some())
    }
}

pub(super) async fn run(
    mut rec: Reconciler,
    wggo: Option<wggo::WireguardGo>,
    mut cmds: mpsc::Receiver<Cmd>,
    mut peers: watch::Receiver<Vec<MeshPeer>>,
    key: watch::Sender<PublicKey>,
) {
    // Without a supervisor (kernel backend), or after it ended: a generation that
    // never changes, kept alive by its sender here.
    let (_idle_tx, idle) = watch::channel(0u64);
    let mut generation = wggo.as_ref().map_or_else(|| idle.clone(), |w| w.generation());
    let mut last_err: Option<String> = None;
    let mut pass = |r: Result<Vec<Step>, MeshError>| match r {
        Ok(_) => last_err = None,
        Err(e) => {
            let text = e.to_string();
            if last_err.as_deref() != Some(text.as_str()) {
                tracing::warn!(error = %text, "mesh reconciliation incomplete; retrying");
            }
            last_err = Some(text);
        }
    };
    let stop = loop {
        let tick = if rec.rotating_peers() { ROTATION_TICK } else { TICK };
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                None => break Stop::Remove,
                Some(Cmd::Sync(tx)) => {
                    let _ = tx.send(rec.reconcile().await);
                }
                Some(Cmd::Status(tx)) => {
                    let _ = tx.send(rec.status().await);
                }
                Some(Cmd::Prepare(tx)) => {
                    let r = rec.keys.prepare().map(|k| {
                        let p = k.public_key();
                        rec.next = Some(k);
                        tracing::info!(next_public_key = %p, "mesh key rotation prepared");
                        p
                    });
                    let _ = tx.send(r);
                }
                Some(Cmd::Commit(tx)) => {
                    let r = match rec.keys.commit() {
                        Ok(k) => {
                            rec.key = k;
                            rec.next = None;
                            let p = rec.key.public_key();
                            key.send_replace(p);
                            tracing::info!(public_key = %p, "mesh key rotation committed");
                            // Switch the device now, not at the next tick, then make
                            // every peer handshake with the new key at once.
                            pass(rec.reconcile().await);
                            pass(rec.kick().await);
                            Ok(p)
                        }
                        Err(e) => Err(e),
                    };
                    let _ = tx.send(r);
                }
                Some(Cmd::Stop(how, tx)) => {
                    let r = if how == Stop::Remove { rec.remove().await } else { Ok(()) };
                    match wggo {
                        Some(w) if how == Stop::Remove => w.stop().await,
                        Some(w) => w.detach().await,
                        None => {}
                    }
                    let _ = tx.send(r);
                    return;
                }
            },
            r = peers.changed() => {
                if r.is_err() {
                    break Stop::Remove;
                }
                rec.peers = peers.borrow_and_update().clone();
                pass(rec.reconcile().await);
            }
            r = generation.changed() => {
                if r.is_ok() {
                    pass(rec.reconcile().await);
                } else {
                    generation = idle.clone();
                }
            }
            _ = tokio::time::sleep(tick) => pass(rec.reconcile().await),
        }
    };
    // The handle was dropped without a shutdown: remove what was made.
    if stop == Stop::Remove {
        let _ = rec.remove().await;
        if let Some(w) = wggo {
            w.stop().await;
        }
    }
}
