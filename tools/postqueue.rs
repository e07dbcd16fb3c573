//! postqueue - Postfix's user interface to the queue: `-p` (listing), `-j` (JSON lines),
//! `-f` (flush), `-s site`, `-i queue_id`; `-c dir` or MAIL_CONFIG select the configuration.

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(relais::showq::postqueue_main("postqueue", &args));
}
