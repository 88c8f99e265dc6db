//! Starting a bot of any mode: the one place that knows every mode (the modes themselves
//! know only the registry's types).

use super::play::Media;
use super::registry::{media_path, Bot, BotError, BotSpec, BotStore, Mode, MAX_BOTS};
use super::Services;
use std::sync::Arc;

/// Starts a bot for `spec`: loads its media (refused before anything starts if it is not
/// playable), joins the room, and lists it.
pub async fn start(
    services: &Arc<Services>,
    bots: &BotStore,
    spec: BotSpec,
) -> Result<Arc<Bot>, BotError> {
    start_bot(services, bots, Bot::new(spec, services)).await
}

/// Starts `bot` (a new one, or one keeping the identity of a bot restarted on this node:
/// [`Bot::restored`]) as [`start`] does.
pub async fn start_bot(
    services: &Arc<Services>,
    bots: &BotStore,
    bot: Arc<Bot>,
) -> Result<Arc<Bot>, BotError> {
    let spec = bot.spec().clone();
    if bots.running() >= MAX_BOTS {
        return Err(BotError::TooMany(MAX_BOTS));
    }
    let media = match &spec.media {
        Some(name) => {
            let path = media_path(&services.media_dir, name)?;
            let name = name.clone();
            let loaded = tokio::task::spawn_blocking(move || super::play::load(&path, &name))
                .await
                .map_err(|e| BotError::Internal(e.to_string()))??;
            Some(Arc::new(loaded))
        }
        None => None,
    };
    let peer = match bot.spec().mode {
        Mode::Echo => super::echo::start(services, &bot).await?,
        Mode::Play => {
            let media: Arc<Media> =
                media.ok_or_else(|| BotError::Invalid("`media` is required for `play`".into()))?;
            super::play::start(services, &bot, media).await?
        }
        Mode::Voicemail => super::voicemail::start(services, &bot, media).await?,
    };
    bot.set_bot_peer(peer.clone());
    bots.insert(&bot);
    services.events.emit(
        crate::events::EventKind::BotStarted,
        Some(bot.id()),
        &bot.doc(&services.store),
    );
    tracing::info!(bot = %bot.id(), room = %bot.room(), mode = bot.spec().mode.name(), peer = %peer, "bot started");
    Ok(bot)
}
