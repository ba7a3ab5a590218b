//! `chatlog files ls|get|stats|gc`: the `CHAT_FILES` bucket (docs/protocol.md §10) for
//! operators, on admin's NATS user. It reads the bucket as any Object Store client does (the edge
//! writes it in that format): every file with its room, name, size, type and first upload; one
//! file's bytes; the totals. `gc` runs one sweep, as every edge does on its own schedule.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use async_nats::jetstream::{self, object_store::ObjectInfo};
use chatlog_events::streams::{FILES_BUCKET, FILES_STREAM};
use clap::Subcommand;
use futures::StreamExt;

#[derive(Subcommand)]
pub enum FilesCommand {
    /// Every file, one per line, tab-separated: id, room, name, size, type, uploaded.
    Ls {
        /// Only this room's files.
        #[arg(long)]
        room: Option<String>,
    },
    /// One file's bytes, to a file or to standard output.
    Get {
        id: String,
        /// Where to write them (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// How many files and bytes, and what the bucket's stream holds.
    Stats,
    /// One sweep now (as every edge runs every `--files-sweep-secs`): removes the files no live
    /// message names, those never attached once older than the period; prints each removed id.
    Gc {
        /// Seconds a file no live message names is kept after its last upload.
        #[arg(long, env = "CHATLOG_FILES_UNATTACHED_SECS", default_value_t = 86_400)]
        files_unattached_secs: u64,
    },
}

pub async fn run(command: FilesCommand, client: async_nats::Client) -> anyhow::Result<()> {
    if let FilesCommand::Gc {
        files_unattached_secs,
    } = command
    {
        return gc(client, Duration::from_secs(files_unattached_secs)).await;
    }
    let js = jetstream::new(client);
    let store = js
        .get_object_store(FILES_BUCKET)
        .await
        .context("opening the files bucket (`chatlog setup` creates it)")?;
    match command {
        FilesCommand::Ls { room } => {
            let prefix = room.map(|r| format!("{r}."));
            for info in objects(&store).await? {
                if prefix.as_deref().is_some_and(|p| !info.name.starts_with(p)) {
                    continue;
                }
                let meta = |key: &str| info.metadata.get(key).map_or("-", String::as_str);
                let room = info.name.split_once('.').map_or("-", |(room, _)| room);
                println!(
                    "{}\t{room}\t{}\t{}\t{}\t{}",
                    info.name,
                    meta("name"),
                    info.size,
                    meta("content-type"),
                    meta("created"),
                );
            }
        }
        FilesCommand::Get { id, output } => {
            let mut object = store.get(&id).await.with_context(|| format!("file {id}"))?;
            let written = match output {
                Some(path) => {
                    let mut file = tokio::fs::File::create(&path)
                        .await
                        .with_context(|| format!("creating {}", path.display()))?;
                    tokio::io::copy(&mut object, &mut file).await?
                }
                None => to_stdout(&mut object).await?,
            };
            eprintln!("{written} bytes");
        }
        FilesCommand::Gc { .. } => {}
        FilesCommand::Stats => {
            let files = objects(&store).await?;
            let bytes: usize = files.iter().map(|f| f.size).sum();
            let mut stream = js.get_stream(FILES_STREAM).await?;
            let state = stream.info().await?.state.clone();
            println!("files\t{}", files.len());
            println!("bytes\t{bytes}");
            println!("stream_messages\t{}", state.messages);
            println!("stream_bytes\t{}", state.bytes);
        }
    }
    Ok(())
}

/// One sweep, with the edge's own code: the history view must be running to answer which
/// messages are deleted.
async fn gc(client: async_nats::Client, unattached: Duration) -> anyhow::Result<()> {
    let deadline = chatlog_edge::Limits::default().nats_deadline;
    let log = chatlog_edge::log::Log::new(client.clone(), deadline);
    let views = chatlog_edge::views::Views::new(client, deadline);
    let files = chatlog_edge::files::Files::new(log.clone(), deadline);
    let swept = chatlog_edge::files::sweep::sweep(&files, &log, &views, unattached)
        .await
        .map_err(|e| anyhow::anyhow!("sweeping the files: {}", e.message))?;
    for id in &swept.removed {
        println!("{id}");
    }
    eprintln!(
        "{} files, {} removed, {} references to deleted messages dropped, {} not settled",
        swept.files,
        swept.removed.len(),
        swept.forgotten,
        swept.failed
    );
    if swept.failed > 0 {
        anyhow::bail!("{} files could not be settled (see the log)", swept.failed);
    }
    Ok(())
}

/// Copies `object` to standard output a chunk at a time (tokio's stdout is not built in).
async fn to_stdout(object: &mut jetstream::object_store::Object) -> anyhow::Result<u64> {
    use std::io::Write;
    use tokio::io::AsyncReadExt;
    let mut buffer = vec![0; 128 * 1024];
    let mut out = std::io::stdout().lock();
    let mut written = 0;
    loop {
        let n = object.read(&mut buffer).await?;
        if n == 0 {
            out.flush()?;
            return Ok(written);
        }
        out.write_all(&buffer[..n])?;
        written += n as u64;
    }
}

/// Every object that is not deleted.
async fn objects(store: &jetstream::object_store::ObjectStore) -> anyhow::Result<Vec<ObjectInfo>> {
    let mut list = store.list().await.context("listing the files")?;
    let mut out = Vec::new();
    while let Some(info) = list.next().await {
        out.push(info.context("listing the files")?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}
