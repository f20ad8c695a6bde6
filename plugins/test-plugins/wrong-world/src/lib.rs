//! Test plugin built for a world that is not one of Sluice's: it exports
//! `greet` instead of `evaluate` and imports an interface the host does not
//! provide. Uploads must be rejected naming both.

wit_bindgen::generate!({
    inline: r#"
        package test:wrong@0.1.0;
        interface net {
            connect: func(host: string) -> bool;
        }
        world wrong {
            import net;
            export greet: func(name: string) -> string;
        }
    "#,
});

struct Wrong;

impl Guest for Wrong {
    fn greet(name: String) -> String {
        if test::wrong::net::connect(&name) { format!("hello {name}") } else { String::new() }
    }
}

export!(Wrong);
