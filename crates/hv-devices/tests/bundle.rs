//! Bundles (FIT images of a layout and its guest images), from fixtures compiled by dtc from
//! the `.its` files beside them (`tools/test.sh` checks the blobs are up to date).

use hv_devices::bundle::{looks_like_bundle, Bundle, BundleError};
use hv_devices::vmconfig::VmLayout;

const GUESTS_LAYOUT: &[u8] = include_bytes!("fixtures/guests.dtb");
const GOOD: &[u8] = include_bytes!("fixtures/bundles/good.itb");

#[test]
fn a_bundle_yields_its_layout_and_named_images() {
    let bundle = Bundle::parse(GOOD).expect("good.itb is a bundle");
    assert_eq!(
        bundle.layout, GUESTS_LAYOUT,
        "the layout image is the layout blob, whole"
    );
    assert_eq!(bundle.layout_name, "layout");
    let layout = VmLayout::parse(bundle.layout).expect("the bundled layout parses");
    assert_eq!(layout.vms.len(), 3);
    // The unit address is dropped from the name; any non-flat_dt type is a guest image.
    assert_eq!(bundle.image_names().collect::<Vec<_>>(), ["mine", "other"]);
    assert_eq!(
        bundle.image("mine"),
        Some(&[0x7f, 0x45, 0x4c, 0x46, 1, 2, 3][..])
    );
    assert_eq!(
        bundle.image("other"),
        Some(&[0x7f, 0x45, 0x4c, 0x46, 9][..])
    );
    assert_eq!(bundle.image("mine@1"), None);
    assert_eq!(
        bundle.image("layout"),
        None,
        "the layout is not a guest image"
    );
}

#[test]
fn bad_bundles_are_refused_with_the_reason() {
    let cases: [(&[u8], BundleError); 5] = [
        (
            include_bytes!("fixtures/bundles/compressed.itb"),
            BundleError::Compressed("mine".into(), "gzip".into()),
        ),
        (
            include_bytes!("fixtures/bundles/no-layout.itb"),
            BundleError::NoLayout,
        ),
        (
            include_bytes!("fixtures/bundles/two-layouts.itb"),
            BundleError::SeveralLayouts("layout".into(), "spare".into()),
        ),
        (
            include_bytes!("fixtures/bundles/duplicate.itb"),
            BundleError::Duplicate("mine".into()),
        ),
        (
            include_bytes!("fixtures/bundles/no-data.itb"),
            BundleError::NoData("mine".into()),
        ),
    ];
    for (blob, want) in cases {
        assert_eq!(Bundle::parse(blob), Err(want.clone()), "{want}");
        assert!(!want.to_string().is_empty());
    }
}

#[test]
fn a_plain_layout_or_an_elf_is_not_a_bundle() {
    // A device tree, but no /images: a layout passed where a bundle belongs.
    assert!(looks_like_bundle(GUESTS_LAYOUT));
    assert_eq!(Bundle::parse(GUESTS_LAYOUT), Err(BundleError::NoImages));
    let elf = [0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
    assert!(!looks_like_bundle(&elf));
    assert_eq!(Bundle::parse(&elf), Err(BundleError::NotADeviceTree));
    // Every truncation of a good bundle is refused, none panics.
    for len in 0..GOOD.len() {
        assert!(
            Bundle::parse(&GOOD[..len]).is_err(),
            "truncated to {len} bytes"
        );
    }
}
