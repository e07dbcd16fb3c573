//! mailq - the sendmail-compatible queue listing: `postqueue -p` (MAIL_CONFIG selects the
//! configuration; sendmail's other flags are accepted and ignored, as Postfix does).

fn main() {
    let mut args = vec!["-p".to_string()];
    let mut it = std::env::args().skip(1);
    // Bounded by the argument count.
    while let Some(a) = it.next() {
        if a == "-C" {
            if let Some(d) = it.next() {
                args.push("-c".into());
                args.push(d);
            }
        } else if a == "-v" {
            args.push(a);
        }
    }
    std::process::exit(relais::showq::postqueue_main("postqueue", &args));
}
