//! Secrets and volumes: unique names, and no removal while a service (or, for a
//! volume, a task still stopping) uses them.

use super::change;
use crate::model::{Secret, Volume};
use crate::store::state::{Action, Change, ObjectKind, State};
use crate::store::{ApplyError, Rules};

impl State {
    pub(super) fn create_secret(&mut self, secret: &Secret, changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        if self.secrets.values().any(|s| s.name == secret.name) || self.secrets.contains_key(&secret.id) {
            return Err(ApplyError::AlreadyExists(format!(
                "secret {:?} already exists",
                secret.name
            )));
        }
        self.secrets.insert(secret.id.clone(), secret.clone());
        changes.push(change(ObjectKind::Secret, Action::Created, &secret.id, &secret.name));
        Ok(())
    }

    pub(super) fn remove_secret(
        &mut self,
        id: &str,
        rules: Rules,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let secret = self
            .secrets
            .get(id)
            .ok_or_else(|| ApplyError::not_found(ObjectKind::Secret, id))?;
        if rules.checked() {
            self.check_secret_unused(secret)?;
        }
        let name = secret.name.clone();
        self.secrets.remove(id);
        changes.push(change(ObjectKind::Secret, Action::Removed, id, &name));
        Ok(())
    }

    pub(super) fn create_volume(&mut self, volume: &Volume, changes: &mut Vec<Change>) -> Result<(), ApplyError> {
        if self.volumes.values().any(|v| v.name == volume.name) || self.volumes.contains_key(&volume.id) {
            return Err(ApplyError::AlreadyExists(format!(
                "volume {:?} already exists",
                volume.name
            )));
        }
        self.volumes.insert(volume.id.clone(), volume.clone());
        changes.push(change(ObjectKind::Volume, Action::Created, &volume.id, &volume.name));
        Ok(())
    }

    pub(super) fn remove_volume(
        &mut self,
        id: &str,
        rules: Rules,
        changes: &mut Vec<Change>,
    ) -> Result<(), ApplyError> {
        let volume = self
            .volumes
            .get(id)
            .ok_or_else(|| ApplyError::not_found(ObjectKind::Volume, id))?;
        if rules.checked() {
            self.check_volume_unused(volume)?;
        }
        let name = volume.name.clone();
        self.volumes.remove(id);
        changes.push(change(ObjectKind::Volume, Action::Removed, id, &name));
        Ok(())
    }
}
